"""Facts about runs (row counts, reconciliation, quality, evaluation) as rows of the ``run_metrics`` table."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoplake import storage
from shoplake.catalog import RUN_METRICS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def record_metrics(
    spark: SparkSession,
    run_id: str,
    stage: str,
    metrics: Mapping[str, float | int],
    *,
    recorded_at: dt.datetime,
    run_date: dt.date | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Upsert one row per metric, keyed by (run_id, stage, metric), so a rerun replaces its own figures."""
    details = details or {}
    rows = [
        (
            run_id,
            stage,
            name,
            float(value),
            json.dumps(details[name]) if name in details else None,
            run_date,
            recorded_at,
        )
        for name, value in metrics.items()
    ]
    frame = spark.createDataFrame(rows, RUN_METRICS.schema)
    storage.retry_conflicts(lambda: storage.merge_table(frame, RUN_METRICS))  # runs at the same time all record
