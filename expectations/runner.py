"""Validate a Spark DataFrame against a suite with GX's Spark data source: metrics are computed by Spark, so a
table is never collected to pandas. Each expectation carries GX's own ``severity``: a failed critical one fails
the suite, a failed warning is reported and the suite still passes.

GX's own caching of the batch is off (``persist=False``): the caller knows whether caching pays and says so with
``cache`` (``gate.Audit``).

With ``docs_dir`` the validation runs as a GX Checkpoint in a file-backed context (``$SHOPLAKE_HOME/gx``), so its
result is stored and rendered into the Data Docs site at ``docs_dir``; without, in a throwaway context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import great_expectations as gx
    from pyspark.sql import DataFrame

SITE = "shoplake"
SAMPLE_SIZE = 5
# Counts and percentages of unexpected rows, without the per-expectation queries for sample values.
COUNTS_ONLY: dict[str, Any] = {"result_format": "BASIC", "partial_unexpected_count": 0}


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    severity: str  # "critical" | "warning" | "info"
    success: bool
    observed: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        kwargs_column = self.column or self.observed.get("columns")
        where = f" on {kwargs_column!r}" if kwargs_column else ""
        rows = self.observed.get("partial_unexpected_index_list")
        sample = rows[:SAMPLE_SIZE] if rows else None
        if sample is None:
            sample = self.observed.get("partial_unexpected_list") or self.observed.get("observed_value")
        count = self.observed.get("unexpected_count")
        counted = f"{count:,} rows, " if count else ""
        return f"{self.expectation}{where} ({self.severity}) failed; {counted}sample: {sample!r}"


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    outcomes: tuple[ExpectationOutcome, ...]

    @property
    def passed(self) -> bool:
        return not self.failures("critical")

    def failures(self, severity: str) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == severity]


def fresh_copy(suite: gx.ExpectationSuite) -> gx.ExpectationSuite:
    """The suite modules' values are shared; a GX context stamps ids on what it stores, so it gets a copy."""
    import great_expectations as gx

    return gx.ExpectationSuite(
        name=suite.name, expectations=[e.copy(update={"id": None}, deep=True) for e in suite.expectations]
    )


def run_suite(
    df: DataFrame,
    suite: gx.ExpectationSuite,
    *,
    docs_dir: Path | None = None,
    context_root: Path | None = None,
    run_name: str | None = None,
    keys: list[str] | None = None,
    cache: bool = False,
) -> SuiteOutcome:
    """Validate ``df``. The validation that decides (and that Data Docs show) computes counts only: GX bundles
    them into one Spark aggregate, where samples of offending rows would cost a job per expectation. Expectations
    that fail are then run again with samples; ``keys`` name the columns that identify an offending row.

    GX computes each metric as its own Spark job; ``cache`` keeps ``df``'s rows in memory across them, which pays
    when ``df`` is built by joins (each job would rebuild them)."""
    from pyspark import StorageLevel

    suite = fresh_copy(suite)
    if cache:
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if docs_dir is None:
            result = _validate_ephemeral(df, suite, COUNTS_ONLY)
        else:
            result = _validate_checkpoint(df, suite, docs_dir, context_root, run_name)
        outcomes = _outcomes(result)
        failed = [key for key, outcome in outcomes.items() if not outcome.success]
        if failed:
            outcomes.update(_failure_samples(df, suite, failed, keys))
    finally:
        if cache:
            df.unpersist()
    return SuiteOutcome(suite.name, tuple(outcomes.values()))


def _failure_samples(
    df: DataFrame, suite: gx.ExpectationSuite, failed: list[str], keys: list[str] | None
) -> dict[str, ExpectationOutcome]:
    import great_expectations as gx

    result_format: dict[str, Any] = {"result_format": "SUMMARY"}
    if keys:
        result_format["unexpected_index_column_names"] = [k for k in keys if k in df.columns]
    rerun = gx.ExpectationSuite(
        name=suite.name,
        expectations=[e.copy(update={"id": None}, deep=True) for e in suite.expectations if _key(e.configuration) in failed],
    )  # fmt: skip
    return _outcomes(_validate_ephemeral(df, rerun, result_format))


def _validate_ephemeral(df: DataFrame, suite: gx.ExpectationSuite, result_format: dict[str, Any]) -> Any:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    _quiet(context)
    asset = context.data_sources.add_spark(name=SITE, persist=False).add_dataframe_asset(name=suite.name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": df})
    return batch.validate(suite, result_format=result_format)


def _validate_checkpoint(
    df: DataFrame, suite: gx.ExpectationSuite, docs_dir: Path, context_root: Path | None, run_name: str | None
) -> Any:
    """A Checkpoint in the file-backed context: the result is stored and rendered into the Data Docs site."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.core.run_identifier import RunIdentifier

    context = _file_context(context_root or docs_dir.parent.parent / "gx", docs_dir)
    suite = context.suites.add_or_update(suite)
    source = context.data_sources.add_or_update_spark(name=SITE, persist=False)
    assets = {a.name: a for a in source.assets}
    asset = assets[suite.name] if suite.name in assets else source.add_dataframe_asset(suite.name)
    batches = {b.name: b for b in asset.batch_definitions}
    batch_definition = batches.get("whole") or asset.add_batch_definition_whole_dataframe("whole")
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=suite.name,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=[SITE])],
            result_format=COUNTS_ONLY,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=run_name))
    (validation_result,) = result.run_results.values()
    return validation_result


def _file_context(root: Path, docs_dir: Path) -> Any:
    """A file-backed GX context whose only Data Docs site writes to ``docs_dir``."""
    import great_expectations as gx

    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    _quiet(context)
    sites = context.list_data_docs_sites()
    if set(sites) != {SITE} or sites[SITE]["store_backend"]["base_directory"] != str(docs_dir):
        for name in list(sites):
            context.delete_data_docs_site(name)
        context.add_data_docs_site(
            site_name=SITE,
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            },
        )
    return context


def _quiet(context: Any) -> None:
    """No per-metric progress bars in logs (Airflow task logs would fill with them)."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)


def _outcomes(result: Any) -> dict[str, ExpectationOutcome]:
    outcomes = {}
    for item in result.results:
        config = item.expectation_config
        outcomes[_key(config)] = ExpectationOutcome(
            expectation=config.type,
            column=config.kwargs.get("column") or config.kwargs.get("column_list") or _pair(config.kwargs),
            severity=str(getattr(config, "severity", None) or "critical").split(".")[-1].lower(),
            success=bool(item.success),
            observed=dict(item.result or {}),
        )
    return outcomes


def _key(config: Any) -> str:
    """An expectation's identity across runs: its type and arguments (results add the batch id to those)."""
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    return json.dumps([config.type, kwargs], sort_keys=True, default=str)


def _pair(kwargs: dict[str, Any]) -> str | None:
    if "column_A" in kwargs:
        return f"{kwargs['column_A']} vs {kwargs['column_B']}"
    return None
