"""Training sets for a purchase model: (user, item, label, event_timestamp) from silver, features joined by Feast.

A row is a user's first view of an item in a session, at the time of that view; its label is 1 when the same user
bought the same item within ``label_window_hours`` after it. Features come from Feast's
``get_historical_features``: for each row, the latest feature values whose feature time (the end of a gold date)
is not after the view — so a view on day D sees day D−1's features, never anything computed from day D or later.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import SILVER_EVENTS
from shoplake.errors import ShoplakeError
from shoplake.settings import Settings, get_settings

log = logging.getLogger(__name__)
TRAINING_FEATURES = (
    "user_profile:segment", "user_profile:r_score", "user_profile:f_score", "user_profile:m_score",
    "user_profile:price_band", "user_activity:views_7d", "user_activity:carts_7d", "user_activity:purchases_30d",
    "user_activity:view_to_purchase_rate", "item_stats:views_7d", "item_stats:view_to_cart_rate",
    "item_stats:view_to_purchase_rate", "item_stats:popularity_rank", "item_stats:price_mean",
    "item_stats:category_l1", "price_for_user:price_to_user_average",
)  # fmt: skip


@dataclass(frozen=True)
class TrainingSet:
    path: Path
    rows: int
    positives: int
    null_rates: dict[str, float]


def transform_labelled_views(events: DataFrame, label_window_hours: float) -> DataFrame:
    """(user_id, item_id, label, event_timestamp): first view per (user, item, session), labelled by a purchase of
    the same item by the same user within the window after it."""
    first = Window.partitionBy("user_id", "product_id", "session_id").orderBy("event_time", "event_id")
    views = (
        events.filter(F.col("event_type") == "view")
        .withColumn("_n", F.row_number().over(first))
        .filter(F.col("_n") == 1)
        .select("user_id", F.col("product_id").alias("item_id"), F.col("event_time").alias("event_timestamp"))
    )
    purchases = events.filter(F.col("event_type") == "purchase").select(
        "user_id", F.col("product_id").alias("item_id"), F.col("event_time").alias("bought_at")
    )
    window = F.expr(f"INTERVAL {int(label_window_hours * 3600)} SECONDS")
    bought = views.join(purchases, on=["user_id", "item_id"], how="inner").filter(
        (F.col("bought_at") >= F.col("event_timestamp")) & (F.col("bought_at") <= F.col("event_timestamp") + window)
    )
    positives = bought.select("user_id", "item_id", "event_timestamp").distinct().withColumn("label", F.lit(1))
    return views.join(positives, on=["user_id", "item_id", "event_timestamp"], how="left").select(
        "user_id", "item_id", F.coalesce("label", F.lit(0)).cast("int").alias("label"), "event_timestamp"
    )


def missing_gold_dates(first: dt.date, last: dt.date) -> list[dt.date]:
    """The days before ``first``..``last`` that gold has no features as of: views on the day after one see older
    features (within a view's TTL) or none. A pipeline over many days computes gold as of its last day only."""
    from shoplake.catalog import USER_FEATURES
    from spark_jobs.silver import dates_between

    computed = set()
    if storage.table_version(USER_FEATURES) is not None:
        computed = {p["as_of_date"] for p in storage.partition_values(USER_FEATURES)}
    day = dt.timedelta(days=1)
    return [d for d in dates_between(first - day, last - day) if d.isoformat() not in computed]


def gold_hint(first: dt.date, last: dt.date) -> str:
    """What would give the views of ``first``..``last`` their features, or "" when nothing is missing: gold for
    the days before them, from the shop's first day on (gold before it would be empty), and a later start when the
    set opens on that first day, whose views no features can precede."""
    from spark_jobs.silver import event_dates

    opening, day = next(iter(event_dates()), None), dt.timedelta(days=1)
    missing = missing_gold_dates(first, last)
    hints = []
    if opening is not None and first <= opening and opening - day in missing:
        hints.append(f"views on {opening}, the first day of events, have no earlier features: start the set on "
                     f"{opening + day} or later")  # fmt: skip
    missing = [d for d in missing if opening is None or d >= opening]
    if missing:
        dates = f"--date {missing[0]}" if len(missing) == 1 else f"--start {missing[0]} --end {missing[-1]}"
        listed = ", ".join(map(str, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        hints.append(f"gold has no features as of {listed}; `shoplake gold {dates}` computes them")
    return "; ".join(hints)


def check_training_set(
    spark: SparkSession, joined: Any, null_rates: dict[str, float], max_null_rate: float, name: str, hint: str = ""
) -> None:
    """The training-set gate (GX on a Spark DataFrame of the rows) on the feature columns named in ``null_rates``;
    a failure names the columns, writes nothing."""
    import pandas as pd

    from expectations.runner import run_suite
    from expectations.training_sets import build_suite

    feature_columns = list(null_rates)
    # Only presence matters to the suite, so features travel as text: a column null in every row has no type
    # Spark could infer.
    present = pd.DataFrame({c: joined[c].map(lambda v: None if v is None or v is pd.NA or v != v else str(v))
                            for c in feature_columns})  # fmt: skip
    present.insert(0, "event_timestamp", joined["event_timestamp"])
    present.insert(0, "label", joined["label"].astype("int64"))
    schema = ", ".join(["label long", "event_timestamp timestamp", *(f"`{c}` string" for c in feature_columns)])
    frame = spark.createDataFrame(present, schema)
    outcome = run_suite(frame, build_suite(feature_columns, max_null_rate), cache=True)
    if not outcome.passed:
        failed = outcome.failures("critical")
        sparse = [f"{o.column} {null_rates[o.column]:.0%}" for o in failed if o.column in null_rates]
        failures = [o.describe() for o in failed if o.column not in null_rates]
        if sparse:  # one line for them all: 20 sampled nulls per column said nothing more
            failures.append(f"{len(sparse)} feature columns are null in more than {max_null_rate:.0%} of the rows: "
                            + ", ".join(sparse))  # fmt: skip
        raise ShoplakeError(f"training set {name} failed its quality gate, nothing written: {'; '.join(failures)}"
                            + (f" ({hint})" if hint else ""))  # fmt: skip


def build_training_set(
    spark: SparkSession, first: dt.date, last: dt.date, *, name: str, settings: Settings | None = None
) -> TrainingSet:
    """Label the views of ``first``..``last``, join their point-in-time features, write Parquet under exports."""
    from shoplake.feature_store import get_store, historical_features

    settings = settings or get_settings()
    if last < first:
        raise ShoplakeError(f"training set: end {last} is before start {first}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):  # checked before minutes of work, not after
        raise ShoplakeError(f"training set name {name!r}: use letters, digits, '_', '-' and '.' (it names a file)")
    events = storage.read_table(spark, SILVER_EVENTS).filter(
        F.col("event_date").between(first, last) & ~F.col("is_bot")
    )
    labelled: Any = transform_labelled_views(events, settings.label_window_hours).toPandas()
    if labelled.empty:
        raise ShoplakeError(f"training set: no views between {first} and {last} in silver_events")
    labelled["event_timestamp"] = labelled["event_timestamp"].dt.tz_localize("UTC")
    store = get_store(settings)
    joined = historical_features(spark, store, labelled, list(TRAINING_FEATURES))
    if len(joined) != len(labelled):  # the contract: one training row per labelled view, never fewer
        raise ShoplakeError(f"training set: {len(labelled)} labelled views but {len(joined)} rows with features")
    feature_columns = [f.replace(":", "__") for f in TRAINING_FEATURES]
    missing = [c for c in feature_columns if c not in joined]
    if missing:  # the gate checks the columns it is given: one the store left out must not pass unseen
        raise ShoplakeError(f"training set: the feature store returned no column {', '.join(missing)}")
    null_rates = {c: float(joined[c].isna().mean()) for c in feature_columns}
    hint = gold_hint(first, last)
    check_training_set(spark, joined, null_rates, settings.quality_max_training_null_rate, name, hint)
    if hint:
        log.warning("training set %s: %s", name, hint)
    out = settings.home / "exports" / "training_sets" / f"{name}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_suffix(".parquet.partial")
    joined.to_parquet(staged, index=False)
    staged.replace(out)  # a reader sees the old file or the whole new one, never half of it
    result = TrainingSet(out, len(joined), int(joined["label"].sum()), null_rates)
    log.info("training set %s: %d rows, %d positives", out, result.rows, result.positives)
    return result
