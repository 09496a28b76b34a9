"""Offline evaluation of the item-based CF recommender on a time split, against a popularity baseline.

The history window's non-bot events are split at the time before which ``1 − test_share`` of them happened. The
gold CF transforms (interactions, basket similarity, score(u, i) = Σ w_ij · r(u, j)) run on the earlier part,
exactly as the daily gold run would. A list shorter than K is made up as the online recommender makes it up: with
the most popular items of the user's top categories in turn, then of the whole shop (gold's item features,
category affinity and popular items, computed on the earlier part). Relevant items: what a user interacted with
after the split and not before it. Baseline: the most popular items before the split, minus what the user bought.
Metrics over users with history before and relevant items after the split: Recall@K, NDCG@K, HitRate@K; with no
such user, nothing is measured (no metrics, rather than zeros).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import ITEMS
from shoplake.errors import DataError
from shoplake.run_metrics import record_metrics
from shoplake.settings import Settings, get_settings
from spark_jobs.gold import baskets_of, cf_recommendations_of, item_similarity_of, read_history
from spark_jobs.interactions import AsOf, transform_interactions
from spark_jobs.item_features import ALL_CATEGORIES, transform_category_popular, transform_item_features
from spark_jobs.similarity import transform_user_ratings
from spark_jobs.user_features import recent_events, transform_category_affinity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    split_at: dt.datetime
    users: int
    k: int
    metrics: dict[str, float]  # "<model>_recall@K", "<model>_ndcg@K", "<model>_hit_rate@K"; empty with no users


def transform_ranked_metrics(ranked: DataFrame, relevant: DataFrame, k: int, model: str) -> DataFrame:
    """Per user: recall, NDCG and hit of a (user_id, item_id, rank) list against (user_id, item_id) relevant items."""
    hits = ranked.filter(F.col("rank") <= k).join(relevant, on=["user_id", "item_id"], how="inner")
    gains = hits.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("hits"), F.sum(1 / F.log2(F.col("rank") + 1)).alias("dcg")
    )
    wanted = relevant.groupBy("user_id").agg(F.count(F.lit(1)).alias("relevant"))
    ideal = F.aggregate(
        F.sequence(F.lit(1), F.least(F.col("relevant"), F.lit(k)).cast("int")), F.lit(0.0),
        lambda total, r: total + 1 / F.log2(r + 1),
    )  # fmt: skip
    return wanted.join(gains, on="user_id", how="left").select(
        "user_id",
        (F.coalesce("hits", F.lit(0)) / F.col("relevant")).alias(f"{model}_recall"),
        (F.coalesce("dcg", F.lit(0.0)) / ideal).alias(f"{model}_ndcg"),
        (F.coalesce("hits", F.lit(0)) > 0).cast("double").alias(f"{model}_hit_rate"),
    )


def evaluate(
    spark: SparkSession,
    as_of_date: dt.date,
    *,
    run_id: str,
    computed_at: dt.datetime,
    test_share: float = 0.2,
    settings: Settings | None = None,
) -> Evaluation:
    settings = settings or get_settings()
    k = settings.cf_top_n
    events = read_history(spark, AsOf(as_of_date, computed_at), settings.history_days).cache()
    try:
        (split_at,) = events.agg(F.percentile_approx(F.unix_micros("event_time"), 1 - test_share)).collect()[0]
        if split_at is None:
            raise DataError(f"evaluation: no silver events up to {as_of_date}")
        split = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(split_at))
        train = events.filter(F.col("event_time") < F.lit(split))
        test = events.filter(F.col("event_time") >= F.lit(split))
        as_of = AsOf(split.date(), computed_at)
        interactions = transform_interactions(train, as_of, settings.event_weights, settings.half_life_days).cache()
        baskets = baskets_of(train, settings).cache()  # read by the per-item counts and by the pair counting
        similarity = item_similarity_of(baskets, as_of, settings)
        ratings = transform_user_ratings(interactions, settings.cf_user_items)
        cf = (  # cached: the list and the items the made-up part leaves out both read it
            cf_recommendations_of(ratings, interactions, similarity, as_of, settings)
            .select("user_id", "item_id", "rank").cache()
        )  # fmt: skip
        seen = interactions.select("user_id", "item_id")
        relevant = (
            test.select("user_id", F.col("product_id").alias("item_id")).distinct()
            .join(seen, on=["user_id", "item_id"], how="left_anti")
            .join(seen.select("user_id").distinct(), on="user_id", how="inner")
        )  # fmt: skip
        bought = interactions.filter(F.col("purchases") > 0).select("user_id", "item_id")
        users = relevant.select("user_id").distinct()
        item_features = transform_item_features(
            train, storage.read_table(spark, ITEMS), as_of, prior_strength=settings.rate_prior_strength
        )
        made_up = transform_popular_fill(
            users,
            transform_category_affinity(recent_events(train, as_of)),
            transform_category_popular(item_features, as_of, keep=settings.popular_items_kept),
            bought.unionByName(cf.select("user_id", "item_id")),
            k,
        )
        popular = (
            interactions.groupBy("item_id").agg(F.count(F.lit(1)).alias("users"))
            .withColumn("popularity", F.row_number().over(Window.orderBy(F.desc("users"), "item_id")))
            .filter(F.col("popularity") <= 2 * k)
        )  # fmt: skip
        baseline = _ranked(users.crossJoin(popular).join(bought, on=["user_id", "item_id"], how="left_anti"),
                           "popularity", k)  # fmt: skip
        filled = _ranked(
            cf.select("user_id", "item_id", F.col("rank").alias("order"))
            .unionByName(made_up.select("user_id", "item_id", (F.col("rank") + k).alias("order")))
            .groupBy("user_id", "item_id").agg(F.min("order").alias("order")),
            "order", k,
        )  # fmt: skip
        per_user = transform_ranked_metrics(filled, relevant, k, "recommender").join(
            transform_ranked_metrics(baseline, relevant, k, "popularity"), on="user_id", how="inner"
        )
        columns = [c for c in per_user.columns if c != "user_id"]
        row = per_user.agg(F.count(F.lit(1)).alias("users"), *(F.avg(c).alias(c) for c in columns)).collect()[0]
        cf.unpersist()
        baskets.unpersist()
        interactions.unpersist()
    finally:
        events.unpersist()
    users_measured = int(row["users"])
    metrics = {f"{c}@{k}": float(row[c]) for c in columns} if users_measured else {}
    result = Evaluation(split, users_measured, k, metrics)
    record_metrics(spark, run_id, "evaluation", {**metrics, "users": result.users}, recorded_at=computed_at,
                   run_date=as_of_date, details={"users": {"split_at": split.isoformat(), "k": k}})  # fmt: skip
    log.info("evaluation at %s over %d users: %s", split, result.users, metrics)
    return result


def transform_popular_fill(
    users: DataFrame, affinity: DataFrame, category_popular: DataFrame, taken: DataFrame, k: int
) -> DataFrame:
    """(user_id, item_id, rank ≤ k): for each of ``users``, the popular items of their ``top_categories`` in turn,
    then of the whole shop, none of ``taken`` (user_id, item_id), each once — ``recommender.popular_items``.

    A category's first k + |taken| places always hold the k items that can be needed from it, so no more are read."""
    places = F.concat(F.coalesce("top_categories", F.array().cast("array<string>")), F.array(F.lit(ALL_CATEGORIES)))
    wanted = users.join(affinity, on="user_id", how="left").select(
        "user_id", F.posexplode(places).alias("group", "category")
    )
    listed = category_popular.select("category", F.posexplode("item_ids").alias("position", "item_id"))
    taken_count = taken.groupBy("user_id").agg(F.count(F.lit(1)).alias("taken"))
    offered = (
        wanted.join(taken_count, on="user_id", how="left")
        .join(listed, on="category", how="inner")
        .filter(F.col("position") < k + F.coalesce("taken", F.lit(0)))
        .join(taken, on=["user_id", "item_id"], how="left_anti")
        .groupBy("user_id", "item_id").agg(F.min(F.struct("group", "position")).alias("place"))
    )  # fmt: skip
    return _ranked(offered, "place", k)


def _ranked(df: DataFrame, order: str, k: int) -> DataFrame:
    best = Window.partitionBy("user_id").orderBy(order, "item_id")
    return (
        df.withColumn("rank", F.row_number().over(best)).filter(F.col("rank") <= k).select("user_id", "item_id", "rank")
    )
