"""Write-audit-publish: a stage's tables are written as new Delta versions, validated, and only then published.

``audit`` validates one table version with its suite (through GX's Spark data source, in a file-backed GX
context under ``$SHOPLAKE_HOME/gx`` so every result lands in the Data Docs site), records a JSON summary in
``run_metrics`` and returns the outcome. ``publish`` records versions in ``published_versions``; readers that
serve features (Feast) read ``published_version(table)``. ``audit_and_publish`` does both for a stage (its audited
tables and those derived from them); on a critical failure it publishes nothing, restores the stage's tables to
their last published contents (the failed version stays in the Delta history) and raises ``QualityGateError``
naming the table, the expectation and a sample of offending rows — so the previously published versions keep
serving, to Feast and to the next stage alike. A trial (gold on a sample of users) is audited and then restored
the same way, never published.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expectations.runner import SuiteOutcome, run_suite
from shoplake import storage
from shoplake.catalog import PUBLISHED_VERSIONS, TableSpec, get_table
from shoplake.errors import DataError
from shoplake.run_metrics import record_metrics
from shoplake.settings import Settings, get_settings

if TYPE_CHECKING:
    import great_expectations as gx
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
MAX_EXAMPLES = 5


class QualityGateError(DataError):
    """A critical expectation failed: nothing of the stage was published."""


@dataclass(frozen=True)
class Audit:
    """What to validate: a table version, its suite, and how to add the audit columns the suite reads.

    GX computes each metric as its own Spark job. ``cache`` keeps the prepared rows in memory across those jobs,
    which pays when preparing joins other tables; for a wide table whose audit columns are cheap (silver), reading
    the few columns each metric needs from Parquet is faster than caching every row first.
    """

    table: TableSpec
    suite: gx.ExpectationSuite
    prepare: Callable[[DataFrame], DataFrame] = lambda df: df
    cache: bool = True


@dataclass(frozen=True)
class AuditResult:
    table: str
    version: int
    outcome: SuiteOutcome

    def summary(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "version": self.version,
            "passed": self.outcome.passed,
            "expectations": len(self.outcome.outcomes),
            "critical_failures": [o.describe() for o in self.outcome.failures("critical")],
            "warnings": [o.describe() for o in self.outcome.failures("warning")],
        }


def data_docs_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).reports_dir / "data_docs"


def audit(
    spark: SparkSession,
    check: Audit,
    version: int,
    *,
    run_id: str,
    recorded_at: dt.datetime,
    run_date: dt.date | None = None,
) -> AuditResult:
    """Validate ``version`` of the table; record the outcome; build its page in the Data Docs."""
    df = check.prepare(storage.read_table(spark, check.table, version=version))
    outcome = run_suite(df, check.suite, docs_dir=data_docs_dir(), run_name=run_id, keys=list(check.table.keys),
                        cache=check.cache)  # fmt: skip
    result = AuditResult(check.table.name, version, outcome)
    record_metrics(
        spark, run_id, "quality", {check.table.name: 1.0 if outcome.passed else 0.0},
        recorded_at=recorded_at, run_date=run_date, details={check.table.name: result.summary()},
    )  # fmt: skip
    for warning in outcome.failures("warning"):
        log.warning("%s v%d: %s", check.table.name, version, warning.describe())
    return result


def publish(
    spark: SparkSession,
    versions: Mapping[str, int],
    *,
    run_id: str,
    published_at: dt.datetime,
    run_date: dt.date | None,
) -> None:
    rows = [(name, version, run_id, run_date, published_at) for name, version in versions.items()]
    frame = spark.createDataFrame(rows, PUBLISHED_VERSIONS.schema)
    storage.retry_conflicts(lambda: storage.merge_table(frame, PUBLISHED_VERSIONS, run_id=run_id))


def published_version(spark: SparkSession, table: str | TableSpec) -> int | None:
    """The newest version of ``table`` that passed its gate; None when none has."""
    from pyspark.sql import functions as F

    if storage.table_version(PUBLISHED_VERSIONS) is None:
        return None
    name = get_table(table).name
    row = (
        storage.read_table(spark, PUBLISHED_VERSIONS)
        .filter(F.col("table_name") == name)
        .agg(F.max("version").alias("v"))
        .collect()[0]
    )
    return None if row["v"] is None else int(row["v"])


def vacuum_keeping_published(
    spark: SparkSession, table: str, retention_hours: int, *, dry_run: bool = False
) -> tuple[list[str], int]:
    """``storage.vacuum_table`` with the retention stretched, where needed, to keep every file of the published
    version: a failed gate restores that version, and could not once an optimize and a vacuum had removed them.
    Returns the files removed and the retention used."""
    published = published_version(spark, table)
    if published is not None and not storage.files_still_current(table, published):
        age = dt.datetime.now(dt.UTC) - storage.committed_at(table, published)
        retention_hours = max(retention_hours, math.ceil(age.total_seconds() / 3600) + 1)
    return storage.vacuum_table(table, retention_hours=retention_hours, dry_run=dry_run), retention_hours


def audit_and_publish(
    spark: SparkSession,
    checks: Mapping[str, tuple[Audit, int]],
    *,
    run_id: str,
    at: dt.datetime,
    run_date: dt.date | None = None,
    derived: Mapping[str, int] | None = None,
    trial: bool = False,
) -> list[AuditResult]:
    """Audit every (check, version); publish them all only if no critical expectation failed anywhere.

    ``derived``: (table, version) the stage wrote from the audited tables without a suite of their own (gold's
    similarity, neighbour and popularity tables): published with them, and put back with them on a failure.
    ``trial``: audit only (a run on a sample of users): every table goes back as the trial found it (``_undo``)."""
    results = [
        audit(spark, check, version, run_id=run_id, recorded_at=at, run_date=run_date)
        for check, version in checks.values()
    ]
    write_run_history(spark)
    tables = [*(r.table for r in results), *(derived or {})]
    failed = [r for r in results if not r.outcome.passed]
    if failed:
        restored = _restore_published(spark, tables)
        raise QualityGateError(_failure_message(failed, restored))
    versions = {**{r.table: r.version for r in results}, **(derived or {})}
    if trial:
        _undo(spark, versions, run_id=run_id)
        log.info("trial run %s: audited, nothing published", run_id)
        return results
    publish(spark, versions, run_id=run_id, published_at=at, run_date=run_date)
    log.info("published %s", versions)
    return results


def _undo(spark: SparkSession, versions: Mapping[str, int], *, run_id: str) -> None:
    """Put each table back as it was before ``versions`` were written: its published contents, or, for a table
    never published, the version before; a table the write created is emptied. A trial's sample must not stay the
    latest contents, where the next run would publish it with its own date, and training sets would read it."""
    for table, published in _restore_published(spark, list(versions)).items():
        if published is None and versions[table] > 0:
            storage.restore_table(table, versions[table] - 1)
        elif published is None:
            spec = get_table(table)
            storage.write_table(spark.createDataFrame([], spec.schema), spec, "overwrite", run_id=run_id)
            log.warning("%s: emptied (the trial created it)", table)


def _restore_published(spark: SparkSession, tables: list[str]) -> dict[str, int | None]:
    """Put each table of the failed stage back to its last published contents, so that everything reading the
    latest version (Feast's sources, the next stage) keeps seeing good data; the failed version stays in the
    Delta history for inspection. A table never published is left as it is (there is nothing good to go back to)."""
    restored: dict[str, int | None] = {}
    for table in tables:
        good = published_version(spark, table)
        if good is not None and storage.table_version(table) != good:
            storage.restore_table(table, good)
            log.warning("%s: restored to published version %d", table, good)
        restored[table] = good
    return restored


def _failure_message(failed: list[AuditResult], restored: Mapping[str, int | None]) -> str:
    lines = []
    for result in failed:
        for failure in result.outcome.failures("critical"):
            lines.append(f"{result.table} v{result.version}: {failure.describe()}")
    serving = ", ".join(
        f"{table} v{version}" if version is not None else f"{table} (none published yet)"
        for table, version in restored.items()
    )
    docs = data_docs_dir() / "index.html"
    return (
        "quality gate failed, nothing published (the previously published versions keep serving):\n  "
        + "\n  ".join(lines)
        + f"\nserving: {serving}\nData Docs: {docs}"
    )


def write_run_history(spark: SparkSession, settings: Settings | None = None) -> Path:
    """``runs.html`` beside GX's Data Docs: pass/fail per table per run, newest run first, from ``run_metrics``."""
    import html

    from pyspark.sql import functions as F

    from shoplake.catalog import RUN_METRICS

    out = data_docs_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    rows = []  # none yet when a first run failed before its gates
    if storage.table_version(RUN_METRICS) is not None:
        rows = (
            storage.read_table(spark, RUN_METRICS)
            .filter(F.col("stage") == "quality")
            .select("run_id", "metric", "value", "details", "recorded_at")
            .orderBy(F.desc("recorded_at"), "metric")
            .collect()
        )
    tables = sorted({r.metric for r in rows})
    runs: dict[str, dict[str, Any]] = {}
    for r in rows:
        runs.setdefault(r.run_id, {"at": r.recorded_at, "cells": {}})["cells"][r.metric] = r
    head = "".join(f"<th>{html.escape(t)}</th>" for t in tables)
    body = []
    for run_id, run in runs.items():
        cells = []
        for table in tables:
            row = run["cells"].get(table)
            if row is None:
                cells.append("<td></td>")
                continue
            detail = json.loads(row.details or "{}")
            title = html.escape("\n".join(detail.get("critical_failures", []) + detail.get("warnings", [])))
            mark, css = ("pass", "ok") if row.value >= 1 else ("FAIL", "bad")
            if row.value >= 1 and detail.get("warnings"):
                mark, css = "pass (warnings)", "warn"
            cells.append(f'<td class="{css}" title="{title}">{mark} · v{detail.get("version", "?")}</td>')
        body.append(f"<tr><td>{html.escape(run_id)}</td><td>{run['at']:%Y-%m-%d %H:%M:%S}</td>{''.join(cells)}</tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>shoplake data quality: run history</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px}}.ok{{background:#dfd}}.bad{{background:#fcc}}.warn{{background:#ffd}}</style></head><body>
<h1>Data quality: run history</h1><p>Each cell: the suite's verdict on the table version the run wrote (hover for
the failed expectations). Validation results in detail: <a href="index.html">Great Expectations Data Docs</a>.</p>
<table><tr><th>run</th><th>validated at (UTC)</th>{head}</tr>{"".join(body)}</table>
{"" if body else "<p>No run has been validated yet.</p>"}</body></html>"""
    path = out / "runs.html"
    path.write_text(page)
    return path
