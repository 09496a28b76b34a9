"""The Airflow DAGs as Airflow recommends testing them: integrity, parameter validation, and ``dag.test()`` of the
daily DAG end to end on the bundled sample."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from shoplake import storage
from shoplake.airflow_setup import DAGS_FOLDER, POOLS, ensure_pools
from shoplake.errors import DataError, InputError, ShoplakeError
from shoplake.orchestration import landing_files, plan_run, silver_dates
from tests.conftest import SAMPLE_EVENTS

NEVER_RETRIED = {"plan_run", "fail_the_run_if_a_task_failed"}


@pytest.fixture(scope="session")
def airflow_db():
    """Airflow's metadata database (SQLite, in the tests' throwaway AIRFLOW_HOME) with shoplake's pools."""
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)
    ensure_pools()


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def run_daily(conf: dict):
    """``dag.test()`` of a freshly parsed shoplake_daily: a test run's tasks run in this process and keep its conf
    in their params, so a second run of the same DAG object inherited the first one's (a trial re-ingested the
    first run's files; a run with a date met an earlier run's start and end)."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER)).get_dag("shoplake_daily").test(run_conf=conf)


def test_every_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "shoplake_daily" in dagbag.dag_ids


def test_dags_are_documented_owned_tagged_and_retried(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md and "Triage" in dag.doc_md, dag_id
        assert not dag.catchup, dag_id
        for task in dag.tasks:
            assert task.owner == "shoplake", task.task_id
            if task.task_id in NEVER_RETRIED:  # they fail the same way on a retry
                assert task.retries == 0, task.task_id
            else:
                assert task.retries >= 1, task.task_id


def test_pools_the_tasks_use_exist(dagbag):
    from airflow.models.pool import Pool

    used = {task.pool for dag in dagbag.dags.values() for task in dag.tasks}
    assert "gpu" in used
    for name in used - {"default_pool"}:
        assert name in POOLS and Pool.get_pool(name) is not None, name
    assert dagbag.get_dag("shoplake_daily").get_task("embed_items").pool == "gpu"


def test_the_daily_dag_runs_its_stages_in_order(dagbag):
    dag = dagbag.get_dag("shoplake_daily")
    order = ["plan_run", "ingest", "silver", "validate_silver", "gold", "validate_gold", "embed_items",
             "knowledge_graph", "validate_graph", "publish_features", "consistency_check", "evaluate_recommender",
             "data_docs"]  # fmt: skip
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).get_flat_relative_ids(upstream=False), (upstream, downstream)
    assert "validate_raw" in dag.get_task("silver").get_flat_relative_ids(upstream=True)
    outlets = {a.uri for t in dag.tasks for a in t.outlets}
    assert {"shoplake://lake/user_features", "shoplake://lake/kg_edges", "shoplake://feast/features"} <= outlets
    assert dag.get_task("consistency_check").outlets[0].uri == "shoplake://feast/features"


def test_a_scheduled_daily_run_processes_the_day_that_has_just_ended(dagbag):
    """The run that starts at 2019-10-02 00:00 has 2019-10-01 as its logical date (its data interval's start), and
    ``plan_run`` processes that date: the day whose events are complete, not the one that has just begun."""
    import pendulum
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    timetable = coerce_to_core_timetable(dagbag.get_dag("shoplake_daily").timetable)
    after = TimeRestriction(earliest=pendulum.datetime(2019, 10, 1, tz="UTC"), latest=None, catchup=True)
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=after)
    assert first.data_interval == (pendulum.datetime(2019, 10, 1, tz="UTC"), pendulum.datetime(2019, 10, 2, tz="UTC"))
    assert first.run_after == pendulum.datetime(2019, 10, 2, tz="UTC")
    assert plan_run({}, first.logical_date, "scheduled__x")["dates"] == ["2019-10-01"]


def test_the_marketing_dag_is_scheduled_on_the_published_features(dagbag):
    dag = dagbag.get_dag("shoplake_marketing")
    condition = dag.timetable.asset_condition
    assert [a.uri for a in condition.objects] == ["shoplake://feast/features"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("date", "2019-13-01"), ("date", "yesterday"), ("start", "2019/10/01"), ("sample_fraction", 0),
     ("sample_fraction", 1.5), ("skip_stages", ["publish_everything"]), ("full_refresh", "yes")],
)  # fmt: skip
def test_params_reject_bad_values(dagbag, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    param = dagbag.get_dag("shoplake_daily").params.get_param(name)
    with pytest.raises(ParamValidationError):
        param.resolve(value)


def test_good_params_pass(dagbag):
    params = dagbag.get_dag("shoplake_daily").params
    assert params.get_param("date").resolve("2019-10-01") == "2019-10-01"
    assert params.get_param("skip_stages").resolve(["embed", "kg"]) == ["embed", "kg"]
    assert params.get_param("sample_fraction").resolve(0.25) == 0.25


def test_params_that_do_not_fit_together_are_refused_before_any_data_task():
    with pytest.raises(ShoplakeError, match="end 2019-10-01 is before start 2019-10-05"):
        plan_run({"start": "2019-10-05", "end": "2019-10-01"}, None, "manual__x")
    with pytest.raises(ShoplakeError, match="either a date or a start/end range"):
        plan_run({"date": "2019-10-01", "start": "2019-10-01"}, None, "manual__x")
    plan = plan_run({"start": "2019-10-01", "end": "2019-10-03"}, None, "manual__2026-01-01T00:00:00+00:00")
    assert plan["dates"] == ["2019-10-01", "2019-10-02", "2019-10-03"]
    assert plan["run_id"] == "airflow-manual__2026-01-01T00-00-00-00-00"
    scheduled = plan_run({}, dt.datetime(2019, 10, 7, tzinfo=dt.UTC), "scheduled__x")
    assert scheduled["dates"] == ["2019-10-07"] and scheduled["sample_fraction"] == 1.0


def test_events_to_ingest_a_given_folder_must_hold_some_and_the_landing_folder_may_hold_none(lake, tmp_path, caplog):
    """A run given a folder of Parquet files (or a typo's neighbour) landed nothing and said nothing of it."""
    given = tmp_path / "exports"
    given.mkdir()
    (given / "day1.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match="exports: folder holds no events files"):
        landing_files(str(given))
    with pytest.raises(InputError, match="no such file or folder"):
        landing_files(str(tmp_path / "exprots"))
    (given / "day1.csv").write_text("event_time\n")
    assert landing_files(str(given)) == [str(given / "day1.csv")]
    assert "day1.parquet: not an events file" in caplog.text
    assert landing_files(None) == []  # nothing has arrived in $SHOPLAKE_HOME/landing
    (lake / "landing").mkdir(parents=True)
    assert landing_files(None) == []


def test_a_failed_task_fails_the_run_though_data_docs_runs_after_it(spark, lake, dagbag):
    """data_docs runs whatever happened; as the one leaf, it made every run a success, a failed gate's included."""
    from airflow.utils.state import DagRunState

    run = run_daily({"start": "2019-10-05", "end": "2019-10-01"})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["plan_run"] == "failed" and states["ingest"] == "upstream_failed"
    assert states["data_docs"] == "success" and states["fail_the_run_if_a_task_failed"] == "failed"
    assert run.state == DagRunState.FAILED


def test_bad_input_fails_its_task_at_once_without_retries(spark, lake, dagbag, tmp_path):
    """A file not in the events format fails the same way on every try: ingest retried it twice (90 s of backoff)
    before the run failed. Errors of the data, not of a service, now fail the task on its first try."""
    from airflow.utils.state import DagRunState

    semicolons = tmp_path / "events.csv"
    semicolons.write_text("event_time;event_type;product_id\n2019-10-01 00:00:00 UTC;view;1\n")
    run = run_daily({"events": str(semicolons), "date": "2019-10-01"})
    ingest = run.get_task_instance("ingest")
    assert (ingest.state, ingest.try_number) == ("failed", 1)
    assert run.state == DagRunState.FAILED


def test_files_whose_every_time_is_unreadable_fail_silver_instead_of_being_skipped(spark, lake, dagbag, tmp_path):
    """A shop that switched to US-format times: ingest landed the rows with no date, silver found no date to rebuild
    and said so, and gold went on with yesterday's silver as though the file were fine."""
    from airflow.utils.state import DagRunState

    us_times = tmp_path / "events.csv"
    us_times.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "10/01/2019 00:00:00,view,1,2,,,1.0,3,s1\n10/01/2019 00:01:00,view,4,2,,,1.0,3,s1\n"
    )
    with pytest.raises(DataError, match="the 2 rows landed now hold no event with a readable time"):
        silver_dates([], {"rows": 2, "new_dates": []})
    assert silver_dates(["2019-10-02"], {"rows": 2, "new_dates": ["2019-10-01"]}) == [
        dt.date(2019, 10, 1),
        dt.date(2019, 10, 2),
    ]
    run = run_daily({"events": str(us_times)})  # manual, without a date: the files' dates, of which there are none
    silver, gold = run.get_task_instance("silver"), run.get_task_instance("gold")
    assert (silver.state, silver.try_number) == ("failed", 1)
    assert gold.state == "upstream_failed"
    assert run.state == DagRunState.FAILED


@pytest.mark.slow
def test_dag_test_runs_the_whole_pipeline_on_the_sample(spark, lake, dagbag, tmp_path):
    from airflow.utils.state import DagRunState
    from pyspark.sql import functions as F

    catalog = tmp_path / "items.jsonl"  # the sample's water heater, as a catalogue describes it
    catalog.write_text('{"item_id": 3900821, "title": "Aqua 80 l water heater", "brand": "aqua"}\n')
    run = run_daily({"events": str(SAMPLE_EVENTS), "items": str(catalog), "date": "2019-10-01"})
    assert run.state == DagRunState.SUCCESS
    assert storage.read_table(spark, "silver_events").count() == 17_410
    heater = storage.read_table(spark, "items").filter(F.col("item_id") == 3900821).first()
    assert (heater.title, heater.source) == ("Aqua 80 l water heater", "catalog")
    for table in ("interactions", "user_features", "item_features", "item_embeddings", "kg_nodes", "kg_edges"):
        assert storage.table_version(table) is not None, table
    from expectations.gate import published_version

    assert published_version(spark, "user_features") == storage.table_version("user_features")
    assert (lake / "reports" / "data_docs" / "runs.html").is_file()
    metrics = {r.metric for r in storage.read_table(spark, "run_metrics").collect() if r.stage == "evaluation"}
    assert "recommender_recall@20" in metrics and "popularity_ndcg@20" in metrics

    downstream = dagbag.get_dag("shoplake_marketing").test()
    assert downstream.state == DagRunState.SUCCESS
    assert (lake / "reports" / "marketing" / "index.html").is_file()

    # a trial: gold on half the users is audited, then every gold table is back to its published contents, and
    # nothing is published to Feast (the consistency check, its asset and the evaluation are skipped with it)
    from spark_jobs.gold import GOLD_TABLES

    published = {t.name: storage.read_table(spark, t).count() for t in GOLD_TABLES}
    exports = lake / "exports" / "interaction_matrix"
    matrix = exports / "as_of_date=2019-10-01"
    matrix_users = spark.read.parquet(str(matrix / "users")).count()
    pairs = storage.read_table(spark, "interactions")
    assert matrix_users == pairs.select("user_id").distinct().count() and not any((exports / ".staged").iterdir())
    trial = run_daily(
        {"date": "2019-10-01", "sample_fraction": 0.5, "skip_stages": ["ingest", "silver", "embed", "kg"]}
    )
    assert trial.state == DagRunState.SUCCESS
    states = {ti.task_id: ti.state for ti in trial.get_task_instances()}
    assert states["validate_gold"] == "success" and states["publish_features"] == "skipped"
    assert states["consistency_check"] == "skipped" and states["data_docs"] == "success"
    assert states["fail_the_run_if_a_task_failed"] == "skipped"
    assert {t.name: storage.read_table(spark, t).count() for t in GOLD_TABLES} == published
    # the trial's matrix (half the users) was dropped: the export is still that of the published interactions
    assert spark.read.parquet(str(matrix / "users")).count() == matrix_users
    assert not any((exports / ".staged").iterdir())
    assert published_version(spark, "user_features") == storage.table_version("user_features") - 2  # trial, restore
