"""Gold ``interactions``: the user–item matrix as of a date, and its sparse export for recommender training.

The implicit score of a (user, item) pair is Σ weight(type) · 2^(−age / half_life) over the pair's events, where
age is measured from the end of the run date; it is floored at 0 (a removal can cancel a cart, not go below it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shoplake.catalog import COUNT_COLUMN, EVENT_TYPES, INTERACTIONS, gold_feature_time

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class AsOf:
    """A gold run's point in time: features use events before ``end`` (the end of ``date``, UTC)."""

    date: dt.date
    computed_at: dt.datetime

    @property
    def end(self) -> dt.datetime:
        return gold_feature_time(self.date)

    def start(self, days: int) -> dt.datetime:
        return self.end - dt.timedelta(days=days)

    def stamp(self, df: DataFrame) -> DataFrame:
        """Add the feature-time columns Feast joins on, and the partition column."""
        return df.select(
            "*",
            F.lit(self.end).cast("timestamp").alias("event_timestamp"),
            F.lit(self.computed_at).cast("timestamp").alias("created_timestamp"),
            F.lit(self.date).alias("as_of_date"),
        )


def age_days(as_of: AsOf) -> Column:
    return (F.unix_micros(F.lit(as_of.end).cast("timestamp")) - F.unix_micros("event_time")) / (SECONDS_PER_DAY * 1e6)


def transform_interactions(
    events: DataFrame, as_of: AsOf, weights: Mapping[str, float], half_life_days: float
) -> DataFrame:
    weight = F.try_element_at(F.create_map(*(F.lit(v) for pair in weights.items() for v in pair)), F.col("event_type"))
    decayed = F.coalesce(weight, F.lit(0.0)) * F.pow(F.lit(2.0), -age_days(as_of) / half_life_days)
    counts = [F.count(F.when(F.col("event_type") == t, 1)).alias(COUNT_COLUMN[t]) for t in EVENT_TYPES]
    pairs = events.groupBy("user_id", F.col("product_id").alias("item_id")).agg(
        *counts,
        F.min("event_time").alias("first_event_time"),
        F.max("event_time").alias("last_event_time"),
        F.greatest(F.sum(decayed), F.lit(0.0)).alias("score"),
    )
    return as_of.stamp(pairs).select(*INTERACTIONS.columns)


def export_matrix(interactions: DataFrame, out_dir: Path) -> dict[str, int]:
    """COO triplets with contiguous 0-based user and item indices, plus the id maps, as Parquet under ``out_dir``.

    The indices follow id order, so the same interactions always give the same matrix. The id maps are read back
    once written, and every count comes from the Parquet footers, so the interactions are scanned three times, not
    once per use."""
    spark = interactions.sparkSession
    users = interactions.select("user_id").distinct()
    users = users.withColumn("user_index", F.row_number().over(Window.orderBy("user_id")) - 1)
    items = interactions.select("item_id").distinct()
    items = items.withColumn("item_index", F.row_number().over(Window.orderBy("item_id")) - 1)
    for name, frame in (("users", users), ("items", items)):
        frame.coalesce(1).write.mode("overwrite").parquet(str(out_dir / name))
    users, items = (spark.read.parquet(str(out_dir / name)) for name in ("users", "items"))
    coo = (
        interactions.join(F.broadcast(users), on="user_id", how="inner")
        .join(F.broadcast(items), on="item_id", how="inner")
        .select("user_index", "item_index", "score")
    )
    coo.repartition(1).write.mode("overwrite").parquet(str(out_dir / "coo"))  # one file; the joins stay parallel
    written = {name: spark.read.parquet(str(out_dir / name)).count() for name in ("users", "items", "coo")}
    return {"users": written["users"], "items": written["items"], "nonzeros": written["coo"]}
