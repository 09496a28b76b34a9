"""Validate a Spark DataFrame against a suite with GX's Spark data source: metrics are computed by Spark, so a
table is never collected to pandas. Each expectation carries GX's own ``severity``: a failed critical one fails
the suite, a failed warning is reported and the suite still passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import great_expectations as gx
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    severity: str  # "critical" | "warning" | "info"
    success: bool
    observed: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        sample = self.observed.get("partial_unexpected_list") or self.observed.get("observed_value")
        return f"{self.expectation}{where} ({self.severity}) failed; observed: {sample!r}"


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    outcomes: tuple[ExpectationOutcome, ...]

    @property
    def passed(self) -> bool:
        return not self.failures("critical")

    def failures(self, severity: str) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == severity]


def run_suite(df: DataFrame, suite: gx.ExpectationSuite) -> SuiteOutcome:
    """Validate ``df`` against ``suite`` in an ephemeral GX context built for this call."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_spark(name="shoplake").add_dataframe_asset(name=suite.name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format="SUMMARY")
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        outcomes.append(
            ExpectationOutcome(
                expectation=config.type,
                column=config.kwargs.get("column"),
                severity=str(getattr(config, "severity", None) or "critical").split(".")[-1].lower(),
                success=bool(item.success),
                observed=dict(item.result or {}),
            )
        )
    return SuiteOutcome(suite.name, tuple(outcomes))
