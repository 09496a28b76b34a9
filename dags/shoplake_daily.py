"""
# shoplake_daily

Every day: land the new behaviour files, clean them into silver, compute the gold features, embed changed items,
rebuild the product knowledge graph — each stage gated by its Great Expectations suite — publish the features to
Feast, check that online and offline values agree, evaluate the recommender, and write the Data Docs. Once the
features are online it emits the `shoplake://feast/features` asset, on which `shoplake_marketing` runs.

**Trigger with parameters** (Trigger DAG ▸ with config): `date`, or `start` and `end` to rebuild silver for a range
and gold as of `end` (for gold as of every day, the history training sets read, use Airflow's Backfill: one run per
date); `full_refresh` rebuilds silver for every date in bronze and re-embeds every item; `skip_stages` leaves stages
out (the tables keep their last versions); `sample_fraction` < 1 makes a trial: gold on that share of users,
audited and then put back as the trial found it, nothing published to Feast; `events` ingests a file or
folder instead of the landing folder (`$SHOPLAKE_HOME/landing`); `items` merges an item catalogue (CSV or JSON
lines: titles, descriptions, attributes) into `items`, whose changed texts the embedding stage then re-embeds.

**Triage a failure** — a task whose data is at fault (bad input, a failed gate) fails on its first try, since a retry
would fail the same way (the log says "not retried"); a service's error (a write conflict, an unreachable store) is
retried first.
- `plan_run` failed: the parameters do not fit together (the message says which); nothing ran.
- `ingest` failed: a file is unreadable or not in the events (or catalogue) format; its name is in the log. Nothing
  of that file was committed; clearing the task is safe (files already landed are skipped, a catalogue merges again).
- `silver` failed with "hold no event with a readable time": every row of the files just landed was unreadable
  (most often a changed time format); the next silver run quarantines them with the reason. Fix the export and
  land it again.
- `gold` or `knowledge_graph` failed with "silver has no events in the N days up to it": the run's date lies
  outside the shop's history (a mistyped date, or no events for N days); nothing was written.
- `validate_silver` failed on `expect_table_row_count_to_be_between`: silver kept no event for the run's dates —
  the day's file has not arrived (land it; the next run picks it up, or clear this run) or every row was
  quarantined (`quarantine_events` says why).
- a `validate_*` task failed: a quality gate stopped publishing. The log names the table, the expectation and
  offending rows; the previously published versions keep serving. Open the Data Docs (`data_docs` task log has the
  link), fix the source, then clear the failed task — every task replaces the partitions of its dates, so reruns
  are safe.
- `publish_features` failed: Feast's registry (PostgreSQL) or online store (Redis) is unreachable — it retried;
  fix the service and clear the task. `consistency_check` failed: online values differ from the offline ones
  (the log lists them); re-run `publish_features`.
- `embed_items` waits: it runs in the `gpu` pool (one slot); it falls back to the CPU where no GPU is visible.
- `fail_the_run_if_a_task_failed` failed: it runs only when another task failed, so that the run shows as failed
  (`data_docs` runs whatever happened); the task that failed before it says why.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task

from shoplake.airflow_tasks import stage_task
from shoplake.orchestration import FEATURES_ONLINE_URI
from shoplake.settings import get_settings

GOLD_ASSETS = [Asset(f"shoplake://lake/{name}") for name in ("interactions", "user_features", "item_features")]
GRAPH_ASSETS = [Asset(f"shoplake://lake/{name}") for name in ("item_embeddings", "kg_nodes", "kg_edges")]
FEATURES_ONLINE = Asset(FEATURES_ONLINE_URI)  # shoplake_marketing is scheduled on it
DATE = {"type": ["null", "string"], "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
TRANSIENT = {"retries": 2, "retry_delay": dt.timedelta(seconds=30), "retry_exponential_backoff": True}
CRON = get_settings().daily_schedule_or_none
# A run covers a data interval and starts once it has ended: the run for 2019-10-01 (its logical date) starts at
# 2019-10-02 00:00 and processes 2019-10-01. A plain cron string would, in Airflow 3, start the run at 00:00 with
# the day that has just begun as its logical date.
SCHEDULE = CronDataIntervalTimetable(CRON, timezone="UTC") if CRON else None


def _day(value: str) -> dt.date:
    return dt.date.fromisoformat(value)


def _skipped(plan: dict[str, Any], stage: str) -> bool:
    if stage in plan["skip"]:
        print(f"{stage}: skipped by the run's skip_stages parameter; its tables keep their last versions")
        return True
    return False


@dag(
    dag_id="shoplake_daily",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2019, 10, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoplake", "etl", "features"],
    doc_md=__doc__,
    default_args={"owner": "shoplake", "retries": 1, "retry_delay": dt.timedelta(seconds=30)},
    params={
        "date": Param(None, **DATE, description="Run date (YYYY-MM-DD); default: a scheduled run's interval date, a manual run's files' dates."),
        "start": Param(None, **DATE, description="First date of a range (silver rebuilt; gold as of end)."),
        "end": Param(None, **DATE, description="Last date of a range (default: start)."),
        "full_refresh": Param(False, type="boolean", description="Rebuild silver for every date; re-embed all."),
        "skip_stages": Param(
            [], type="array", items={"type": "string", "enum": ["ingest", "silver", "gold", "embed", "kg"]},
            uniqueItems=True, description="Stages to leave out.",
        ),
        "sample_fraction": Param(
            1.0, type="number", exclusiveMinimum=0, maximum=1,
            description="Share of users gold is computed on; below 1, a trial that publishes nothing."
        ),
        "events": Param(None, type=["null", "string"], description="File or folder to ingest instead of the landing folder."),
        "items": Param(None, type=["null", "string"], description="Item catalogue (CSV or JSON lines) to merge into items."),
    },
)  # fmt: skip
def shoplake_daily() -> None:
    @task(retries=0)  # parameters that do not fit together fail the same way on a retry
    def plan_run() -> dict[str, Any]:
        from shoplake.orchestration import plan_run as plan

        context = get_current_context()
        # a manual run's logical date is only when someone pressed Trigger: it processes the dates it lands
        manual = context["dag_run"].run_type == "manual"
        return plan(context["params"], None if manual else context.get("logical_date"), context["run_id"])

    @stage_task(**TRANSIENT)
    def ingest(plan: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if _skipped(plan, "ingest"):
            return {"version": None, "ingest_run_id": plan["run_id"], "new_dates": []}
        files = orchestration.landing_files(plan["events"])
        return orchestration.ingest(files, plan["items"], plan["run_id"]).log()

    @stage_task()
    def validate_raw(plan: dict[str, Any], landed: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        return orchestration.validate_raw(landed["version"], landed["ingest_run_id"], plan["run_id"]).log()

    @stage_task(**TRANSIENT)
    def silver(plan: dict[str, Any], landed: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if _skipped(plan, "silver"):
            return {}
        if plan["full_refresh"]:
            dates = orchestration.bronze_dates()
        else:
            dates = orchestration.silver_dates(plan["dates"] or [], landed)
        if not dates:
            print("silver: no dates to process (no date given and no new files landed)")
            return {}
        if get_settings().spark_submit:
            from shoplake.spark_submit import submit_job

            submit_job("silver", "--start", dates[0].isoformat(), "--end", dates[-1].isoformat(),
                       "--run-id", plan["run_id"])  # fmt: skip
            return orchestration.silver_result(dates, plan["run_id"])
        return orchestration.build_silver(dates, plan["run_id"]).log()

    @stage_task()
    def validate_silver(plan: dict[str, Any], built: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if not built:
            return {}
        dates = [_day(d) for d in built["dates"]]
        return orchestration.validate_silver(built["version"], dates, built["quarantine_share"], plan["run_id"]).log()

    @stage_task(**TRANSIENT)
    def gold(plan: dict[str, Any], silver_checked: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if _skipped(plan, "gold"):
            return {}
        as_of = _day(plan["dates"][-1]) if plan["dates"] else orchestration.latest_silver_date()
        if get_settings().spark_submit and plan["sample_fraction"] == 1:
            from shoplake.spark_submit import submit_job

            submit_job("gold", "--date", as_of.isoformat(), "--run-id", plan["run_id"])
            return orchestration.gold_result(as_of)
        return orchestration.build_gold(as_of, plan["run_id"], plan["sample_fraction"]).log()

    @stage_task(outlets=GOLD_ASSETS)
    def validate_gold(plan: dict[str, Any], built: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if not built:
            return {}
        return orchestration.validate_gold(
            built["versions"], _day(built["as_of"]), plan["run_id"], plan["sample_fraction"]
        ).log()

    @stage_task(pool="gpu", **TRANSIENT)
    def embed_items(plan: dict[str, Any], gold_checked: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if _skipped(plan, "embed"):
            return {}
        return orchestration.embed(plan["run_id"], plan["full_refresh"]).log()

    @stage_task()
    def knowledge_graph(plan: dict[str, Any], embedded: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if _skipped(plan, "kg"):
            return {}
        as_of = orchestration.graph_date(_day(plan["dates"][-1]) if plan["dates"] else None)
        return {"as_of": as_of.isoformat(), **orchestration.knowledge_graph(as_of, plan["run_id"]).log()}

    @stage_task(outlets=GRAPH_ASSETS)
    def validate_graph(plan: dict[str, Any], graph: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        if not graph:
            return {}
        return orchestration.validate_graph(_day(graph["as_of"]), plan["run_id"]).log()

    @stage_task(**TRANSIENT)
    def publish_features(plan: dict[str, Any], graph_checked: dict[str, Any]) -> dict[str, Any]:
        """Materializes what the gates published (a failed gate restored the last good contents)."""
        from airflow.sdk.exceptions import AirflowSkipException

        from shoplake import orchestration
        from shoplake.feature_store import NothingToPublishError

        if plan["sample_fraction"] < 1:  # the consistency check, its asset and the evaluation are skipped with it
            raise AirflowSkipException("a trial run (sample_fraction < 1) publishes nothing to Feast")
        since = _day(plan["dates"][-1]) if plan["dates"] else None  # gold's date, when the run reran an older one
        try:
            return orchestration.publish_features(plan["full_refresh"], since).log()
        except NothingToPublishError as error:  # gold skipped on a lake that never had any: nothing to retry
            raise AirflowSkipException(str(error)) from error

    @task(outlets=[FEATURES_ONLINE])
    def consistency_check(published: dict[str, Any]) -> dict[str, Any]:
        """Emits the asset downstream DAGs wait for only once online and offline values agree."""
        from shoplake import orchestration

        return orchestration.check_features().log()

    @stage_task()
    def evaluate_recommender(plan: dict[str, Any], checked: dict[str, Any]) -> dict[str, Any]:
        from shoplake import orchestration

        as_of = _day(plan["dates"][-1]) if plan["dates"] else orchestration.latest_silver_date()
        return orchestration.evaluate_recommender(as_of, plan["run_id"]).log()

    @task(trigger_rule="all_done")
    def data_docs() -> dict[str, Any]:
        """Runs whatever happened upstream: a failed gate is exactly when people need the report."""
        from shoplake import orchestration

        return orchestration.data_docs().log()

    @task(trigger_rule="one_failed", retries=0)
    def fail_the_run_if_a_task_failed() -> None:
        """data_docs runs whatever happened, so as the one leaf it made every run a success, a failed gate's
        included. Every task is upstream of this one (through evaluate_recommender, or data_docs itself): it runs
        only when one failed, and fails the run (Airflow's watcher pattern)."""
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a task of this run failed: its log says why (triage: the DAG's docs)")

    plan = plan_run()
    landed = ingest(plan)
    raw_checked = validate_raw(plan, landed)
    built_silver = silver(plan, landed)
    raw_checked >> built_silver
    silver_checked = validate_silver(plan, built_silver)
    built_gold = gold(plan, silver_checked)
    gold_checked = validate_gold(plan, built_gold)
    graph = knowledge_graph(plan, embed_items(plan, gold_checked))
    checked = consistency_check(publish_features(plan, validate_graph(plan, graph)))
    evaluated = evaluate_recommender(plan, checked)
    docs = data_docs()
    evaluated >> docs
    [evaluated, docs] >> fail_the_run_if_a_task_failed()


shoplake_daily()
