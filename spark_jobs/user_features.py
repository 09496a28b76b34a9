"""Gold ``user_features``: RFM and segment, activity over 1/7/30 days, sessions, conversion, category affinity.

RFM looks at purchases in the history window: recency in whole days from the end of the run date to the last
purchase, frequency = purchases, monetary = their summed price. Scores 1–5 come from quintile thresholds over the
users who purchased (5 = most recent / most frequent / highest spend). Segments follow the common R×F grid
(``SEGMENT_GRID``); users with no purchase in the window are ``browsers``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shoplake.catalog import COUNT_COLUMN, EVENT_TYPES, USER_FEATURES, WINDOWS_DAYS
from spark_jobs.interactions import SECONDS_PER_DAY, AsOf

# (segment, r_scores, f_scores): the first matching row wins.
SEGMENT_GRID = (
    ("champions", (5,), (4, 5)),
    ("loyal", (3, 4), (4, 5)),
    ("potential_loyalist", (4, 5), (2, 3)),
    ("new", (5,), (1,)),
    ("promising", (4,), (1,)),
    ("need_attention", (3,), (3,)),
    ("about_to_sleep", (3,), (1, 2)),
    ("cant_lose", (1, 2), (5,)),
    ("at_risk", (1, 2), (3, 4)),
    ("hibernating", (1, 2), (1, 2)),
)
NO_PURCHASE_SEGMENT = "browsers"
SEGMENTS = tuple(s for s, _, _ in SEGMENT_GRID) + (NO_PURCHASE_SEGMENT,)
QUINTILES = [0.2, 0.4, 0.6, 0.8]
PRICE_BANDS = ("budget", "mid", "upper", "premium")  # by the user's median price vs the shop's price quartiles
TOP_CATEGORIES = 3


def segment(r_score: Column, f_score: Column) -> Column:
    expression: Column = F.lit(NO_PURCHASE_SEGMENT)
    for name, rs, fs in reversed(SEGMENT_GRID):
        expression = F.when(r_score.isin(*rs) & f_score.isin(*fs), F.lit(name)).otherwise(expression)
    return F.when(r_score.isNull() | f_score.isNull(), F.lit(NO_PURCHASE_SEGMENT)).otherwise(expression)


def quintile_score(value: Column, thresholds: list[float] | None, higher_is_better: bool = True) -> Column:
    """1–5 by how many quintile thresholds ``value`` exceeds (reversed when lower is better); null without value."""
    if not thresholds:
        return F.lit(None).cast("int")
    above = sum((value > F.lit(t)).cast("int") for t in thresholds)
    score = (1 + above) if higher_is_better else (5 - above)
    return F.when(value.isNull(), None).otherwise(score).cast("int")


def rfm_measures() -> list[Column]:
    """Per-user aggregates behind RFM: the last purchase, purchases, and their summed price."""
    is_purchase = F.col("event_type") == "purchase"
    return [
        F.max(F.when(is_purchase, F.col("event_time"))).alias("last_purchase"),
        F.count(F.when(is_purchase, 1)).alias("frequency"),
        F.coalesce(F.sum(F.when(is_purchase, F.col("price"))), F.lit(0.0)).alias("monetary"),
    ]


def with_rfm_scores(per_user: DataFrame, as_of: AsOf) -> DataFrame:
    """Recency in days, 1–5 scores from the buyers' quintiles, and the segment, beside ``rfm_measures``."""
    end_seconds = F.unix_seconds(F.lit(as_of.end).cast("timestamp"))
    recency = F.floor((end_seconds - F.unix_seconds("last_purchase")) / SECONDS_PER_DAY).cast("int")
    rfm = per_user.withColumn("recency_days", recency)
    buyers = rfm.filter(F.col("frequency") > 0)
    rfm_columns = ("recency_days", "frequency", "monetary")
    quantiles = buyers.agg(*(F.percentile_approx(c, QUINTILES).alias(c) for c in rfm_columns)).first()
    thresholds: dict[str, list[float] | None] = dict.fromkeys(rfm_columns)
    if quantiles is not None and quantiles["frequency"] is not None:  # someone bought something
        thresholds = {c: [float(v) for v in quantiles[c]] for c in rfm_columns}
    bought = F.col("frequency") > 0
    return rfm.select(
        "*",
        F.when(bought, quintile_score(F.col("recency_days"), thresholds["recency_days"], higher_is_better=False)).alias(
            "r_score"
        ),
        F.when(bought, quintile_score(F.col("frequency"), thresholds["frequency"])).alias("f_score"),
        F.when(bought, quintile_score(F.col("monetary"), thresholds["monetary"])).alias("m_score"),
    ).withColumn("segment", segment(F.col("r_score"), F.col("f_score")))


def activity_counts(as_of: AsOf) -> list[Column]:
    """Counts per event type over the last 1/7/30 days."""
    return [
        F.count(
            F.when((F.col("event_type") == t) & (F.col("event_time") >= F.lit(as_of.start(w)).cast("timestamp")), 1)
        ).alias(f"{COUNT_COLUMN[t]}_{w}d")
        for t in EVENT_TYPES
        for w in WINDOWS_DAYS
    ]


def transform_sessions(recent: DataFrame) -> DataFrame:
    """Sessions in the last 30 days and their mean length in seconds (first to last event)."""
    sessions = recent.groupBy("user_id", "session_id").agg(
        (F.unix_micros(F.max("event_time")) - F.unix_micros(F.min("event_time"))).alias("length_us")
    )
    return sessions.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("sessions_30d"), (F.avg("length_us") / 1e6).alias("mean_session_seconds")
    )


def transform_conversion(recent: DataFrame) -> DataFrame:
    """Share of the items a user viewed in the last 30 days that the user also bought in them."""
    per_item = recent.groupBy("user_id", "product_id").agg(
        F.max((F.col("event_type") == "view").cast("int")).alias("viewed"),
        F.max((F.col("event_type") == "purchase").cast("int")).alias("bought"),
    )
    return per_item.groupBy("user_id").agg(
        F.try_divide(F.sum(F.col("viewed") * F.col("bought")), F.sum("viewed")).alias("view_to_purchase_rate")
    )


def transform_category_affinity(recent: DataFrame) -> DataFrame:
    """Top-3 categories by events in the last 30 days, with their shares of the user's categorised events."""
    per_category = recent.filter(F.col("category_code").isNotNull()).groupBy("user_id", "category_code").count()
    total = F.sum("count").over(Window.partitionBy("user_id"))
    ranked = per_category.withColumn("share", F.col("count") / total).withColumn(
        "position", F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("count"), "category_code"))
    )
    top = ranked.filter(F.col("position") <= TOP_CATEGORIES)
    ordered = F.array_sort(F.collect_list(F.struct("position", "category_code", "share")))
    return (
        top.groupBy("user_id")
        .agg(ordered.alias("top"))
        .select(
            "user_id",
            F.col("top.category_code").alias("top_categories"),
            F.col("top.share").alias("top_category_shares"),
        )
    )


def transform_preferred_brand(recent: DataFrame) -> DataFrame:
    per_brand = recent.filter(F.col("brand").isNotNull()).groupBy("user_id", "brand").count()
    best = Window.partitionBy("user_id").orderBy(F.desc("count"), "brand")
    return (
        per_brand.withColumn("position", F.row_number().over(best))
        .filter(F.col("position") == 1)
        .select("user_id", F.col("brand").alias("preferred_brand"))
    )


def shop_price_quartiles(events: DataFrame) -> list[float] | None:
    """The shop's price quartiles over priced events; None when no event has a price."""
    quartiles = (
        events.filter(F.col("price").isNotNull())
        .agg(F.percentile_approx("price", [0.25, 0.5, 0.75]).alias("q"))
        .first()
    )
    if quartiles is None or quartiles["q"] is None:
        return None
    return [float(v) for v in quartiles["q"]]


def median_price_below(quartiles: list[float] | None) -> list[Column]:
    """Per user: priced events, and how many are priced below each shop quartile; what ``price_band`` needs.

    The median (the ⌈n/2⌉-th smallest of n prices, as ``percentile_approx`` picks it) lies below q exactly when at
    least ⌈n/2⌉ prices do, so the band comes from plain counts."""
    price = F.col("price")
    return [F.count(price).alias("priced_events")] + [
        F.count(F.when(price < F.lit(q), 1)).alias(f"priced_below_q{n}") for n, q in enumerate(quartiles or (), 1)
    ]


def price_band(quartiles: list[float] | None) -> Column:
    """The band of a user's median price among the shop's price quartiles; null for a user without prices."""
    if quartiles is None:
        return F.lit(None).cast("string")
    half = F.ceil(F.col("priced_events") / 2)
    band = F.lit(PRICE_BANDS[-1])
    for n in reversed(range(1, len(quartiles) + 1)):
        band = F.when(F.col(f"priced_below_q{n}") >= half, F.lit(PRICE_BANDS[n - 1])).otherwise(band)
    return F.when(F.col("priced_events") == 0, F.lit(None).cast("string")).otherwise(band)


def recent_events(events: DataFrame, as_of: AsOf) -> DataFrame:
    """The last 30 days' events: what sessions, conversion and category affinity describe."""
    return events.filter(F.col("event_time") >= F.lit(as_of.start(30)).cast("timestamp"))


def transform_user_features(events: DataFrame, as_of: AsOf) -> DataFrame:
    """One row per user with any event in ``events`` (the history window of non-bot silver events).

    What is grouped by user alone — RFM, activity, the counts behind the price band — is one hash aggregation:
    a per-user quantile sketch there made Spark sort every event instead."""
    recent = recent_events(events, as_of)
    quartiles = shop_price_quartiles(events)
    per_user = events.groupBy("user_id").agg(*rfm_measures(), *activity_counts(as_of), *median_price_below(quartiles))
    features = with_rfm_scores(per_user, as_of).withColumn("price_band", price_band(quartiles))
    for part in (
        transform_sessions(recent),
        transform_conversion(recent),
        transform_category_affinity(recent),
        transform_preferred_brand(recent),
    ):
        features = features.join(part, on="user_id", how="left")
    zero_filled: dict[str, bool | float | int | str] = {
        c: 0 for c in USER_FEATURES.columns if c.endswith("d") and c.split("_")[-1] in ("1d", "7d", "30d")
    }
    features = features.fillna(zero_filled)
    return as_of.stamp(features).select(*USER_FEATURES.columns)
