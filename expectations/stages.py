"""Which suite gates which table version at each stage of a run; the CLI and the Airflow DAG call these.

Each function validates what its stage just wrote — the rows of this run or of the run date, never the whole
history — and publishes the versions only if every critical expectation passed (``gate.audit_and_publish``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from expectations import (
    bronze_events,
    interactions,
    item_embeddings,
    item_features,
    kg_edges,
    kg_nodes,
    silver_events,
    user_features,
)
from expectations.gate import Audit, AuditResult, audit_and_publish
from shoplake import storage
from shoplake.catalog import (
    BRONZE_EVENTS,
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    ITEM_FEATURES,
    KG_EDGES,
    KG_NODES,
    SILVER_EVENTS,
    USER_FEATURES,
)
from shoplake.settings import get_settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _on_date(as_of_date: dt.date):  # noqa: ANN202 - a DataFrame → DataFrame filter
    return lambda df: df.filter(F.col("as_of_date") == as_of_date)


def validate_bronze(
    spark: SparkSession, version: int, *, ingest_run_id: str, run_id: str, at: dt.datetime
) -> list[AuditResult]:
    check = Audit(BRONZE_EVENTS, bronze_events.suite, lambda df: df.filter(F.col("ingest_run_id") == ingest_run_id))
    return audit_and_publish(spark, {BRONZE_EVENTS.name: (check, version)}, run_id=run_id, at=at)


def validate_silver(
    spark: SparkSession,
    version: int,
    dates: Sequence[dt.date],
    *,
    quarantine_share: float,
    run_id: str,
    at: dt.datetime,
) -> list[AuditResult]:
    first, last = min(dates), max(dates)
    ceiling = get_settings().quality_max_quarantine_share

    def prepare(df: DataFrame) -> DataFrame:
        return silver_events.prepare(
            df, first=first, last=last, quarantine_share=quarantine_share, quarantine_ceiling=ceiling
        )

    check = Audit(SILVER_EVENTS, silver_events.suite, prepare, cache=False)
    return audit_and_publish(spark, {SILVER_EVENTS.name: (check, version)}, run_id=run_id, at=at, run_date=last)


def validate_gold(
    spark: SparkSession,
    versions: Mapping[str, int],
    as_of_date: dt.date,
    *,
    history: DataFrame,
    run_id: str,
    at: dt.datetime,
    trial: bool = False,
) -> list[AuditResult]:
    """Gold's three audited tables and, published or put back with them, the tables derived from them."""
    on_date = _on_date(as_of_date)
    checks = {
        INTERACTIONS.name: Audit(
            INTERACTIONS, interactions.suite, lambda df: interactions.prepare(on_date(df), history=history)
        ),
        USER_FEATURES.name: Audit(USER_FEATURES, user_features.suite, lambda df: user_features.prepare(on_date(df))),
        ITEM_FEATURES.name: Audit(ITEM_FEATURES, item_features.suite, lambda df: item_features.prepare(on_date(df))),
    }
    return audit_and_publish(
        spark,
        {name: (check, versions[name]) for name, check in checks.items()},
        run_id=run_id,
        at=at,
        run_date=as_of_date,
        derived={name: version for name, version in versions.items() if name not in checks},
        trial=trial,
    )


def validate_embeddings_and_graph(
    spark: SparkSession,
    *,
    model: str,
    dim: int,
    run_id: str,
    at: dt.datetime,
    run_date: dt.date | None = None,
) -> list[AuditResult]:
    """The embeddings and the graph built from them, gated and published together."""
    nodes_version = storage.table_version(KG_NODES)
    checks = {
        ITEM_EMBEDDINGS.name: Audit(
            ITEM_EMBEDDINGS, item_embeddings.suite, lambda df: item_embeddings.prepare(df, model=model, dim=dim)
        ),
        KG_NODES.name: Audit(KG_NODES, kg_nodes.suite),
        KG_EDGES.name: Audit(
            KG_EDGES,
            kg_edges.suite,
            lambda df: kg_edges.prepare(df, nodes=storage.read_table(spark, KG_NODES, version=nodes_version)),
        ),
    }
    versions = {name: storage.table_version(name) for name in checks}
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        from shoplake.errors import TableNotFoundError

        raise TableNotFoundError(f"nothing to validate: {', '.join(missing)} not written yet")
    return audit_and_publish(
        spark,
        {name: (check, versions[name]) for name, check in checks.items()},  # type: ignore[misc]
        run_id=run_id,
        at=at,
        run_date=run_date,
    )
