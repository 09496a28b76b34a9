"""Gold ``item_features``: demand over 1/7/30 days, smoothed conversion rates, popularity ranks, prices, category.

Conversion rates are smoothed towards the shop-wide rate with ``prior_strength`` pseudo-views, so an item seen
twice and carted once does not outrank a steady seller: rate = (carts + m·p) / (views + m), clamped to [0, 1].
Ranks are unique: ties in the 30-day popularity (views + carts + purchases) are broken by item id.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from shoplake.catalog import CATEGORY_POPULAR, COUNT_COLUMN, ITEM_FEATURES, WINDOWS_DAYS
from spark_jobs.interactions import AsOf

COUNTED_TYPES = ("view", "cart", "purchase")
ALL_CATEGORIES = "(all)"  # the whole shop, in category_popular
UNKNOWN_CATEGORY = "(none)"  # items without a category are ranked among themselves


def smoothed_rate(successes: Column, trials: Column, prior: float, strength: float) -> Column:
    rate = (successes + F.lit(strength * prior)) / (trials + F.lit(strength))
    return F.least(F.greatest(rate, F.lit(0.0)), F.lit(1.0))


def transform_item_features(events: DataFrame, items: DataFrame, as_of: AsOf, *, prior_strength: float) -> DataFrame:
    """One row per item with any event in ``events`` (the history window of non-bot silver events). Category and
    brand are the ``items`` table's: the catalogue's where one was landed, else the events' latest."""
    in_window = {w: F.col("event_time") >= F.lit(as_of.start(w)).cast("timestamp") for w in WINDOWS_DAYS}
    counts = [
        F.count(F.when((F.col("event_type") == t) & in_window[w], 1)).alias(f"{COUNT_COLUMN[t]}_{w}d")
        for t in COUNTED_TYPES
        for w in WINDOWS_DAYS
    ]
    per_item = events.groupBy(F.col("product_id").alias("item_id")).agg(
        *counts,
        F.mean("price").alias("price_mean"),
        F.min("price").alias("price_min"),
        F.max("price").alias("price_max"),
    )
    per_item = per_item.join(items.select("item_id", "category_code", "brand"), on="item_id", how="left")
    users = (
        events.filter(in_window[30])
        .select(F.col("product_id").alias("item_id"), "user_id")
        .distinct()
        .groupBy("item_id")
        .agg(F.count(F.lit(1)).alias("distinct_users_30d"))
    )
    totals = (  # from the events: summing per_item's counts would compute per_item twice
        events.filter(in_window[30])
        .agg(*(F.count(F.when(F.col("event_type") == t, 1)).alias(COUNT_COLUMN[t]) for t in COUNTED_TYPES))
        .first()
    )
    views = float(totals["views"] or 0) if totals else 0.0
    cart_prior = float(totals["carts"] or 0) / views if totals and views else 0.0
    purchase_prior = float(totals["purchases"] or 0) / views if totals and views else 0.0
    popularity = F.col("views_30d") + F.col("carts_30d") + F.col("purchases_30d")
    levels = F.split(F.col("category_code"), r"\.")
    category_group = F.coalesce(F.col("category_code"), F.lit(UNKNOWN_CATEGORY))
    features = per_item.join(users, on="item_id", how="left").select(
        "*",
        smoothed_rate(F.col("carts_30d"), F.col("views_30d"), cart_prior, prior_strength).alias("view_to_cart_rate"),
        smoothed_rate(F.col("purchases_30d"), F.col("views_30d"), purchase_prior, prior_strength).alias("view_to_purchase_rate"),
        F.row_number().over(Window.orderBy(popularity.desc(), "item_id")).cast("int").alias("popularity_rank"),
        F.row_number().over(Window.partitionBy(category_group).orderBy(popularity.desc(), "item_id")).cast("int")
        .alias("category_popularity_rank"),
        *(F.try_element_at(levels, F.lit(n)).alias(f"category_l{n}") for n in (1, 2, 3)),
    )  # fmt: skip
    features = features.fillna({"distinct_users_30d": 0})
    return as_of.stamp(features).select(*ITEM_FEATURES.columns)


def transform_category_popular(item_features: DataFrame, as_of: AsOf, *, keep: int) -> DataFrame:
    """The ``keep`` most popular items of every category path (each level of it) and of the whole shop
    (``ALL_CATEGORIES``), in popularity order: what a recommender offers a user it knows nothing else about."""
    parts = F.split(F.col("category_code"), r"\.")
    prefixes = F.transform(F.sequence(F.lit(1), F.size(parts)), lambda n: F.array_join(F.slice(parts, 1, n), "."))
    categories = F.when(F.col("category_code").isNotNull(), F.array_union(prefixes, F.array(F.lit(ALL_CATEGORIES))))
    placed = item_features.select(
        "item_id", "popularity_rank",
        F.explode(F.coalesce(categories, F.array(F.lit(ALL_CATEGORIES)))).alias("category"),
    )  # fmt: skip
    best = Window.partitionBy("category").orderBy("popularity_rank", "item_id")
    top = (
        placed.withColumn("_n", F.row_number().over(best))
        .filter(F.col("_n") <= keep)
        .groupBy("category")
        .agg(F.array_sort(F.collect_list(F.struct("_n", "item_id"))).alias("ranked"))
        .select("category", F.transform("ranked", lambda r: r["item_id"]).alias("item_ids"))
    )
    return as_of.stamp(top).select(*CATEGORY_POPULAR.columns)
