"""The pipeline's steps as plain functions, so the CLI and the Airflow DAG run exactly the same code.

Each step takes and returns small JSON-able values (dates, run ids, table versions — never data), which is what
Airflow passes between tasks through XCom. Each returns a ``Step``: lines for people (the CLI prints them, a task
logs them) and ``outputs`` for the next step. Steps are idempotent: a landed file is not landed again, silver
and gold replace the partitions of their dates, embeddings skip unchanged items, the graph is rebuilt whole.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoplake.errors import DataError, InputError, ShoplakeError

log = logging.getLogger(__name__)
STAGES = ("ingest", "silver", "gold", "embed", "kg")
# The Airflow asset the daily DAG emits once features are online; the marketing DAG is scheduled on it.
FEATURES_ONLINE_URI = "shoplake://feast/features"


@dataclass(frozen=True)
class Step:
    lines: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def log(self) -> dict[str, Any]:
        for line in self.lines:
            log.info("%s", line)
        return self.outputs


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _spark() -> Any:
    from shoplake.spark import get_spark

    return get_spark("shoplake")


def _quality_lines(results: Sequence[Any], published: bool = True) -> list[str]:
    lines = []
    for result in results:
        warnings = result.outcome.failures("warning")
        note = f", {len(warnings)} warnings" if warnings else ""
        lines.append(f"  quality: {result.table} v{result.version} passed {len(result.outcome.outcomes)} "
                     f"expectations{note}; {'published' if published else 'not published'}")  # fmt: skip
    return lines


def dates_from(date: dt.date | None, start: dt.date | None, end: dt.date | None) -> list[dt.date] | None:
    """A date, or a range start..end (end defaults to start); None when neither was given."""
    from spark_jobs.silver import dates_between

    if date is not None and (start is not None or end is not None):
        raise ShoplakeError("give either a date or a start/end range, not both")
    if date is not None:
        return [date]
    if start is None:
        if end is not None:
            raise ShoplakeError("an end date needs a start date")
        return None
    return dates_between(start, end or start)


def latest_silver_date() -> dt.date:
    from spark_jobs.silver import event_dates

    dates = event_dates()
    if not dates:
        raise DataError("silver_events is empty: run `shoplake silver` (or `shoplake pipeline`) first")
    return dates[-1]


def graph_date(run_date: dt.date | None) -> dt.date:
    """The date a run builds the knowledge graph as of. The graph is one current table, not one per date, so it
    follows the newest date in silver (or the run's, when later): a run that reprocesses an older date (late
    events, a backfill) rebuilt it from that date's history and rolled the graph back by the days since."""
    latest = latest_silver_date()
    return max(run_date, latest) if run_date else latest


def bronze_dates() -> list[dt.date]:
    """Every event date bronze holds (a full refresh rebuilds them all)."""
    from shoplake import storage
    from shoplake.catalog import BRONZE_EVENTS

    return sorted(
        dt.date.fromisoformat(p["event_date"]) for p in storage.partition_values(BRONZE_EVENTS) if p["event_date"]
    )


def silver_dates(given: Sequence[str], landed: Mapping[str, Any]) -> list[dt.date]:
    """The dates silver rebuilds: those asked for and those of the files ``ingest`` just landed. Landed rows of
    which none has a readable time are a data error: silver would have no date to rebuild, and the run would go on
    serving yesterday's features as if the files were fine."""
    dates = sorted({dt.date.fromisoformat(d) for d in (*given, *landed.get("new_dates", []))})
    if not dates and landed.get("rows"):
        raise DataError(
            f"the {landed['rows']:,} rows landed now hold no event with a readable time (a changed time format?); "
            "nothing was built — the next silver run quarantines them (quarantine_events says why)"
        )
    return dates


def ingest(event_paths: Sequence[str], items_path: str | None, run_id: str) -> Step:
    """Land the events files (a file already landed is skipped) and, optionally, a catalogue (with or without
    events: a shop's catalogue changes on its own schedule). The catalogue is checked before any events land and
    merged after them, so an input refused at either step leaves nothing committed."""
    from spark_jobs import bronze, items

    for path in event_paths:
        bronze.file_format(path)  # an unsupported format fails before Spark starts
    if items_path is not None and not Path(items_path).is_file():
        raise InputError(f"{items_path}: no such file")
    catalog = items.prepare_catalog(_spark(), items_path, now()) if items_path is not None else None

    def merge_catalog() -> list[str]:
        if catalog is None:
            return []
        result = items.merge_catalog(catalog, run_id=run_id)
        return [f"items: {result.rows:,} catalogue rows merged, version {result.version}"]

    if not event_paths:
        outputs: dict[str, Any] = {"version": None, "ingest_run_id": run_id, "rows": 0, "dates": [], "new_dates": []}
        return Step(["bronze_events: no events files to land", *merge_catalog()], outputs)
    spark = _spark()
    landed = bronze.land_event_files(spark, list(event_paths), run_id=run_id, ingested_at=now())
    lines = [f"bronze_events: {landed.rows_landed:,} rows from {len(landed.files_landed)} new files "
             f"({len(landed.files_already_landed)} already landed), version {landed.version}", *merge_catalog()]  # fmt: skip
    dates = bronze.event_dates(spark, landed.checksums) if landed.checksums else []
    new_dates = bronze.event_dates(spark, landed.checksums_landed) if landed.checksums_landed else []
    outputs = {
        "version": landed.version if landed.rows_landed else None,
        "ingest_run_id": landed.run_id,
        "rows": landed.rows_landed,
        "dates": [d.isoformat() for d in dates],  # of every file given
        "new_dates": [d.isoformat() for d in new_dates],  # of the files landed now (late data included)
    }
    return Step(lines, outputs)


def validate_raw(version: int | None, ingest_run_id: str, run_id: str) -> Step:
    if version is None:
        return Step(["  quality: bronze_events: nothing new landed, nothing to validate"])
    from expectations.stages import validate_bronze

    results = validate_bronze(_spark(), version, ingest_run_id=ingest_run_id, run_id=run_id, at=now())
    return Step(_quality_lines(results), {"bronze_events": version})


def build_silver(dates: Sequence[dt.date], run_id: str) -> Step:
    from spark_jobs.silver import run_silver

    result = run_silver(_spark(), list(dates), run_id=run_id, processed_at=now())
    c = result.counts
    share = c["quarantined"] / result.bronze_rows if result.bronze_rows else 0.0
    line = (f"silver_events {result.dates[0]}..{result.dates[-1]}: {c['kept']:,} kept of {result.bronze_rows:,} "
            f"bronze rows ({c['exact_duplicate']:,} exact duplicates, {c['collapsed']:,} repeats collapsed, "
            f"{c['quarantined']:,} quarantined)")  # fmt: skip
    outputs = {"version": result.silver_version, "dates": [d.isoformat() for d in result.dates],
               "quarantine_share": share}  # fmt: skip
    return Step([line], outputs)


def _run_metrics(run_id: str, stage: str) -> dict[str, float]:
    from pyspark.sql import functions as F

    from shoplake import storage
    from shoplake.catalog import RUN_METRICS

    rows = storage.read_table(_spark(), RUN_METRICS).filter((F.col("run_id") == run_id) & (F.col("stage") == stage))
    return {r.metric: r.value for r in rows.collect()}


def silver_result(dates: Sequence[dt.date], run_id: str) -> dict[str, Any]:
    """What ``build_silver`` returns, for a silver job that ran elsewhere (spark-submit): from the lake."""
    from shoplake import storage
    from shoplake.catalog import SILVER_EVENTS

    metrics = _run_metrics(run_id, "silver")
    if "bronze_rows" not in metrics:
        raise ShoplakeError(f"run {run_id} recorded no silver metrics: the submitted silver job did not finish")
    share = metrics["quarantined"] / metrics["bronze_rows"] if metrics["bronze_rows"] else 0.0
    version = storage.table_version(SILVER_EVENTS)
    return {"version": version, "dates": [d.isoformat() for d in dates], "quarantine_share": share}


def gold_result(as_of: dt.date) -> dict[str, Any]:
    """What ``build_gold`` returns, for a gold job that ran elsewhere (spark-submit): the tables' versions."""
    from shoplake import storage
    from spark_jobs.gold import GOLD_TABLES

    return {"versions": {t.name: storage.table_version(t) for t in GOLD_TABLES}, "as_of": as_of.isoformat()}


def validate_silver(version: int, dates: Sequence[dt.date], quarantine_share: float, run_id: str) -> Step:
    from expectations.stages import validate_silver as gate

    results = gate(_spark(), version, dates, quarantine_share=quarantine_share, run_id=run_id, at=now())
    return Step(_quality_lines(results), {"silver_events": version})


def build_gold(as_of: dt.date, run_id: str, sample_fraction: float = 1.0) -> Step:
    from spark_jobs.gold import run_gold

    result = run_gold(_spark(), as_of, run_id=run_id, computed_at=now(), sample_fraction=sample_fraction)
    sampled = f" (users sampled: {sample_fraction:.0%})" if sample_fraction < 1 else ""
    lines = [
        f"gold as of {as_of}{sampled}: " + ", ".join(f"{name} {rows:,}" for name, rows in result.rows.items()),
        f"interaction matrix (COO + id maps), until gold's gate publishes it: {result.matrix_dir}",
    ]
    return Step(lines, {"versions": result.versions, "as_of": as_of.isoformat()})


def validate_gold(versions: Mapping[str, int], as_of: dt.date, run_id: str, sample_fraction: float = 1.0) -> Step:
    from expectations.gate import QualityGateError
    from expectations.stages import validate_gold as gate
    from shoplake.settings import get_settings
    from spark_jobs.gold import discard_matrix, publish_matrix, read_history
    from spark_jobs.interactions import AsOf

    spark, settings = _spark(), get_settings()
    history = read_history(spark, AsOf(as_of, now()), settings.history_days, sample_fraction)
    trial = sample_fraction < 1
    try:
        results = gate(spark, versions, as_of, history=history, run_id=run_id, at=now(), trial=trial)
    except QualityGateError:
        discard_matrix(settings, as_of, run_id)
        raise
    lines = _quality_lines(results, published=not trial)
    if trial:
        discard_matrix(settings, as_of, run_id)
        lines.append(f"  trial (users sampled: {sample_fraction:.0%}): gold audited, not published; its tables are "
                     "back as the trial found them (the trial's versions stay in their Delta history), "
                     "and its interaction matrix is dropped")  # fmt: skip
    elif matrix := publish_matrix(settings, as_of, run_id):
        lines.append(f"  interaction matrix published with gold: {matrix}")
    return Step(lines, {r.table: r.version for r in results})


def embed(run_id: str, full_refresh: bool = False) -> Step:
    from spark_jobs.embed_items import run_embed

    result = run_embed(_spark(), run_id=run_id, embedded_at=now(), full_refresh=full_refresh)
    rate = f" at {result.items_per_second:,.0f} items/s" if result.embedded else ""
    line = (f"item_embeddings ({result.model}, dim {result.dim}): {result.embedded:,} items embedded{rate}, "
            f"{result.unchanged:,} unchanged, {result.without_text:,} without any text (not embedded)")  # fmt: skip
    return Step([line], {"model": result.model, "dim": result.dim, "version": result.version})


def knowledge_graph(as_of: dt.date, run_id: str) -> Step:
    from spark_jobs.knowledge_graph import run_knowledge_graph

    result = run_knowledge_graph(_spark(), as_of, run_id=run_id, created_at=now())
    lines = [
        "kg_nodes: " + ", ".join(f"{kind} {n:,}" for kind, n in result.nodes.items()),
        "kg_edges: " + ", ".join(f"{relation} {n:,}" for relation, n in result.edges.items()),
    ]
    if result.similar_same_category_share is not None:
        lines.append(f"SIMILAR_TO pairs sharing a leaf category: {result.similar_same_category_share:.1%}")
    return Step(lines, {"versions": result.versions})


def validate_graph(as_of: dt.date, run_id: str) -> Step:
    from expectations.stages import validate_embeddings_and_graph
    from shoplake.encoder import ModelSpec
    from shoplake.settings import get_settings

    spec = ModelSpec.from_path(get_settings().model_path)
    results = validate_embeddings_and_graph(
        _spark(), model=spec.name, dim=spec.dim, run_id=run_id, at=now(), run_date=as_of
    )
    return Step(_quality_lines(results), {r.table: r.version for r in results})


def data_docs() -> Step:
    from expectations.gate import data_docs_dir, write_run_history

    history = write_run_history(_spark())
    return Step(
        [f"Data Docs: {data_docs_dir() / 'index.html'}", f"quality run history: {history}"],
        {"data_docs": str(data_docs_dir() / "index.html"), "run_history": str(history)},
    )


# --- the Airflow run's plan ----------------------------------------------------------------------------------------


def plan_run(params: Mapping[str, Any], logical_date: dt.datetime | None, dag_run_id: str) -> dict[str, Any]:
    """Check a run's parameters together (each was already checked alone by its ``Param`` schema) and resolve them.

    Dates: ``date``, or ``start``..``end``; without either, a scheduled run processes its data interval's date and
    a manual one the dates of the files it lands. Raises ``ShoplakeError`` with the reason, before any data task."""
    from shoplake.files import safe_name

    def day(name: str) -> dt.date | None:
        value = params.get(name)
        if value in (None, ""):
            return None
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise ShoplakeError(f"param {name}: {value!r} is not a date (YYYY-MM-DD)") from None

    date, start, end = day("date"), day("start"), day("end")
    if start and end and end < start:
        raise ShoplakeError(f"param end {end} is before start {start}")
    dates = dates_from(date, start, end)
    if dates is None and logical_date is not None:
        dates = [logical_date.date()]
    skip = list(params.get("skip_stages") or [])
    unknown = sorted(set(skip) - set(STAGES))
    if unknown:
        raise ShoplakeError(f"param skip_stages: unknown stages {unknown}; known: {list(STAGES)}")
    fraction = float(params.get("sample_fraction", 1.0))
    if not 0 < fraction <= 1:
        raise ShoplakeError(f"param sample_fraction must be in (0, 1], got {fraction}")
    return {
        "run_id": "airflow-" + safe_name(dag_run_id),
        "dates": [d.isoformat() for d in dates] if dates else None,
        "full_refresh": bool(params.get("full_refresh", False)),
        "skip": skip,
        "sample_fraction": fraction,
        "events": params.get("events") or None,
        "items": params.get("items") or None,
    }


def landing_files(path: str | None) -> list[str]:
    """Events files to ingest: the given file or folder (see ``event_files``), else those of the landing folder,
    where none is not an error (nothing arrived)."""
    from shoplake.settings import get_settings

    if path:
        return event_files([Path(path)])
    landing = get_settings().landing_dir
    return _events_in(landing) if landing.is_dir() else []


def event_files(paths: Sequence[Path]) -> list[str]:
    """Files as given; a folder stands for the events files directly inside it, in name order. A given folder that
    holds none is an error: the run would have landed nothing and said nothing of it."""
    from spark_jobs.bronze import EVENT_SUFFIXES

    found: list[str] = []
    for path in paths:
        if path.is_dir():
            if not (inside := _events_in(path)):
                raise InputError(f"{path}: folder holds no events files ({', '.join(EVENT_SUFFIXES)})")
            found.extend(inside)
        elif not path.is_file():
            raise InputError(f"{path}: no such file or folder")
        else:
            found.append(str(path))
    return found


def _events_in(folder: Path) -> list[str]:
    """The events files directly inside ``folder``, in name order; the other files are named in the log."""
    from spark_jobs.bronze import EVENT_SUFFIXES

    files = sorted(p for p in folder.iterdir() if p.is_file())
    for other in (p for p in files if not p.name.lower().endswith(EVENT_SUFFIXES)):
        log.warning("%s: not an events file (%s), left where it is", other, ", ".join(EVENT_SUFFIXES))
    return [str(p) for p in files if p.name.lower().endswith(EVENT_SUFFIXES)]


def publish_features(full_refresh: bool = False, since: dt.date | None = None) -> Step:
    """Feast: apply the definitions, materialize the published gold tables into the online store (gold dates from
    ``since`` on again: the run's gold date, when it reran an older one)."""
    from shoplake import feature_store

    done = feature_store.publish(_spark(), full_refresh=full_refresh, since=since)
    lines = [f"feast: {m.view} materialized {m.start:%Y-%m-%d %H:%M} → {m.end:%Y-%m-%d %H:%M}" for m in done]
    return Step(lines or ["feast: every feature view already up to date"], {"materialized": [m.view for m in done]})


def check_features(sample: int = 50) -> Step:
    """Online values of sampled entities must equal the latest offline values; a mismatch fails the run."""
    from shoplake import feature_store

    compared = feature_store.check_consistency(_spark(), feature_store.get_store(), sample)
    line = "feast consistency: online = offline for " + ", ".join(f"{v} ({n})" for v, n in compared.items())
    return Step([line], {"compared": compared})


def evaluate_recommender(as_of: dt.date, run_id: str) -> Step:
    """Recall/NDCG/HitRate@K of the recommender against popularity on a time split; stored in run_metrics."""
    from spark_jobs.evaluation import evaluate

    result = evaluate(_spark(), as_of, run_id=run_id, computed_at=now())
    k = result.k
    line = (f"evaluation ({result.users:,} users, split at {result.split_at:%Y-%m-%d %H:%M}): "
            + ", ".join(f"{m} {v:.4f}" for m, v in result.metrics.items()))  # fmt: skip
    if not result.users:
        line = (f"evaluation: nothing measured; no user has events both before and after the split at "
                f"{result.split_at:%Y-%m-%d %H:%M} (a longer history gives the split users on both sides)")  # fmt: skip
    return Step([line], {"users": result.users, "k": k, **result.metrics})


def marketing_report() -> Step:
    from shoplake.marketing import build_report, report_summary

    report = build_report(_spark())
    return Step(report_summary(report), {"page": str(report.page), "audiences": report.audiences})
