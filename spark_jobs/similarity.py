"""Gold ``item_similarity`` and ``cf_recommendations``: item-based collaborative filtering.

Co-occurrence is counted over *baskets*: each session's and each user's most recent ``basket_items`` distinct
items. Pairs come from a join of baskets with themselves on the basket id — at most ``basket_items²`` pairs per
basket, so the work grows with the data, never with items × items. For items i, j with c_ij baskets holding both
and n_i baskets holding i,

    w_ij = c_ij / (n_i^(1−α) · n_j^α)

which is the cosine of the two items' basket vectors at α = 0.5; a larger α damps very popular neighbours j.
Each item keeps its top-K neighbours N(i). A user's score for item i is Σ_{j∈N(i)} w_ij · r(u, j), r being the
interaction score; items the user bought are excluded.

A very popular item j is a neighbour of tens of thousands of items, and every user who saw it would add a term to
each of them. So each j contributes to at most ``max_contributions`` items i — those with the largest w_ij. When
no item is in more neighbourhoods than that, the scores are exactly the formula's.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from shoplake.catalog import CF_RECOMMENDATIONS, ITEM_NEIGHBORS, ITEM_SIMILARITY, USER_ITEMS
from spark_jobs.interactions import AsOf


def _latest_items(events: DataFrame, owner: str, prefix: str, basket_items: int) -> DataFrame:
    latest = events.groupBy(owner, "product_id").agg(F.max("event_time").alias("last_time"))
    recent = Window.partitionBy(owner).orderBy(F.desc("last_time"), "product_id")
    return (
        latest.withColumn("position", F.row_number().over(recent))
        .filter(F.col("position") <= basket_items)
        .select(
            F.concat(F.lit(prefix), F.col(owner).cast("string")).alias("basket_id"),
            F.col("product_id").alias("item_id"),
        )
    )


def transform_baskets(events: DataFrame, basket_items: int) -> DataFrame:
    """(basket_id, item_id): each session's and each user's most recent distinct items."""
    return _latest_items(events, "session_id", "s:", basket_items).unionByName(
        _latest_items(events, "user_id", "u:", basket_items)
    )


def transform_item_similarity(
    baskets: DataFrame, as_of: AsOf, *, top_k: int, damping: float, min_support: int
) -> DataFrame:
    holding = baskets.groupBy("item_id").agg(F.count(F.lit(1)).alias("baskets"))
    left, right = baskets.alias("a"), baskets.alias("b")
    pairs = (
        left.join(right, on="basket_id", how="inner")
        .filter(F.col("a.item_id") != F.col("b.item_id"))
        .groupBy(F.col("a.item_id").alias("item_id"), F.col("b.item_id").alias("neighbor_item_id"))
        .agg(F.count(F.lit(1)).alias("support"))
        .filter(F.col("support") >= min_support)
    )
    n_i = holding.select(F.col("item_id"), F.col("baskets").alias("n_i"))
    n_j = holding.select(F.col("item_id").alias("neighbor_item_id"), F.col("baskets").alias("n_j"))
    weighted = (
        pairs.join(n_i, on="item_id", how="inner")
        .join(n_j, on="neighbor_item_id", how="inner")
        .withColumn("weight", F.col("support") / (F.pow("n_i", 1 - damping) * F.pow("n_j", damping)))
    )
    best = Window.partitionBy("item_id").orderBy(F.desc("weight"), F.desc("support"), "neighbor_item_id")
    top = weighted.withColumn("rank", F.row_number().over(best)).filter(F.col("rank") <= top_k)
    return as_of.stamp(top.select("item_id", "neighbor_item_id", "weight", "support", "rank")).select(
        *ITEM_SIMILARITY.columns
    )


def transform_cf_recommendations(
    interactions: DataFrame,
    similarity: DataFrame,
    as_of: AsOf,
    *,
    top_n: int,
    user_items: int,
    max_contributions: int,
) -> DataFrame:
    strongest = Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")
    rated = (
        interactions.filter(F.col("score") > 0)
        .withColumn("position", F.row_number().over(strongest))
        .filter(F.col("position") <= user_items)
        .select("user_id", F.col("item_id").alias("neighbor_item_id"), F.col("score").alias("rating"))
    )
    bought = interactions.filter(F.col("purchases") > 0).select("user_id", "item_id")
    closest = Window.partitionBy("neighbor_item_id").orderBy(F.desc("weight"), "item_id")
    neighbours = (
        similarity.select("item_id", "neighbor_item_id", "weight")
        .withColumn("reach", F.row_number().over(closest))
        .filter(F.col("reach") <= max_contributions)
    )
    scored = (
        rated.join(neighbours, on="neighbor_item_id", how="inner")
        .groupBy("user_id", "item_id")
        .agg(F.sum(F.col("weight") * F.col("rating")).alias("score"))
        .join(bought, on=["user_id", "item_id"], how="left_anti")
    )
    best = Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")
    top = scored.withColumn("rank", F.row_number().over(best)).filter(F.col("rank") <= top_n)
    return as_of.stamp(top.select("user_id", "item_id", "score", "rank")).select(*CF_RECOMMENDATIONS.columns)


def transform_item_neighbors(similarity: DataFrame, as_of: AsOf) -> DataFrame:
    """item_similarity as one row per item: neighbour ids and weights in rank order (the online lookup shape)."""
    ranked = similarity.groupBy("item_id").agg(
        F.array_sort(F.collect_list(F.struct("rank", "neighbor_item_id", "weight"))).alias("ranked")
    )
    return as_of.stamp(
        ranked.select(
            "item_id",
            F.transform("ranked", lambda r: r["neighbor_item_id"]).alias("neighbor_ids"),
            F.transform("ranked", lambda r: r["weight"]).alias("neighbor_weights"),
        )
    ).select(*ITEM_NEIGHBORS.columns)


def transform_user_items(interactions: DataFrame, as_of: AsOf, *, user_items: int, bought_items: int) -> DataFrame:
    """Per user: the ``user_items`` highest-scored items with their scores r(u, j) (what the CF formula sums over)
    and up to ``bought_items`` most recently bought items (what a recommender must not offer again)."""
    rated = interactions.filter(F.col("score") > 0)
    strongest = Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")
    top = (
        rated.withColumn("position", F.row_number().over(strongest))
        .filter(F.col("position") <= user_items)
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(F.struct("position", "item_id", "score"))).alias("top"))
    )
    latest = Window.partitionBy("user_id").orderBy(F.desc("last_event_time"), "item_id")
    bought = (
        interactions.filter(F.col("purchases") > 0)
        .withColumn("position", F.row_number().over(latest))
        .filter(F.col("position") <= bought_items)
        .groupBy("user_id")
        .agg(F.sort_array(F.collect_list("item_id")).alias("bought_item_ids"))
    )
    users = interactions.select("user_id").distinct()
    return as_of.stamp(
        users.join(top, on="user_id", how="left")
        .join(bought, on="user_id", how="left")
        .select(
            "user_id",
            F.coalesce(F.transform("top", lambda r: r["item_id"]), F.array().cast("array<long>")).alias("item_ids"),
            F.coalesce(F.transform("top", lambda r: r["score"]), F.array().cast("array<double>")).alias("item_scores"),
            F.coalesce("bought_item_ids", F.array().cast("array<long>")).alias("bought_item_ids"),
        )
    ).select(*USER_ITEMS.columns)
