"""Gold ``item_similarity`` and ``cf_recommendations``: item-based collaborative filtering.

Co-occurrence is counted over *baskets*: each session's and each user's most recent ``basket_items`` distinct
items — at most ``basket_items²`` pairs per basket, so the work grows with the data, never with items × items.
Baskets are partitioned by basket id and each task counts its pairs as a sparse product C = BᵀB of its baskets ×
items matrix (what a self-join on the basket id and a count would do, in compiled code, with a task's repeated
pairs summed at once); the partial counts are then partitioned by item and sorted, and each task sums them per
pair, weighs them and keeps every item's top K (``NeighbourRanking``) — no pair table is materialised whole, and
no window sorts every pair. For items i, j with c_ij baskets holding both and n_i baskets holding i,

    w_ij = c_ij / (n_i^(1−α) · n_j^α)

which is the cosine of the two items' basket vectors at α = 0.5; a larger α damps very popular neighbours j.
Each item keeps its top-K neighbours N(i). A user's score for item i is Σ_{j∈N(i)} w_ij · r(u, j), r being the
interaction score; items the user bought are excluded.

A very popular item j is a neighbour of tens of thousands of items, and every user who saw it would add a term to
each of them. So each j contributes to at most ``max_contributions`` items i — those with the largest w_ij. When
no item is in more neighbourhoods than that, the scores are exactly the formula's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from shoplake.catalog import CF_RECOMMENDATIONS, ITEM_NEIGHBORS, ITEM_SIMILARITY, USER_ITEMS
from spark_jobs.interactions import AsOf


def _latest_items(events: DataFrame, owner: str, prefix: str, basket_items: int) -> DataFrame:
    # one shuffle, by owner, serves both the aggregation and the window (by owner and item, it took two: -25 %)
    latest = events.repartition(owner).groupBy(owner, "product_id").agg(F.max("event_time").alias("last_time"))
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
    ranking = NeighbourRanking.of(holding.toArrow(), top_k=top_k, damping=damping, min_support=min_support)
    top = (
        baskets.select("basket_id", "item_id")
        .filter(F.col("basket_id").isNotNull())  # an owner-less row is in no basket (a join would not match it)
        .repartition("basket_id")
        .mapInArrow(count_pairs, PAIRS_SCHEMA)
        .repartition("item_id")
        .sortWithinPartitions("item_id")
        .mapInArrow(ranking.top_neighbours, SIMILARITY_SCHEMA)
    )
    return as_of.stamp(top).select(*ITEM_SIMILARITY.columns)


PAIRS_SCHEMA = "item_id long, neighbor_item_id long, support long"
PAIR_COLUMNS = ("item_id", "neighbor_item_id", "support")


def count_pairs(batches: Iterable[pa.RecordBatch], block_terms: int = 4_000_000) -> Iterator[pa.RecordBatch]:
    """(item, neighbour, baskets holding both) of one task's baskets, each basket whole in the task: C = BᵀB off
    its diagonal, B the task's baskets × items 0/1 matrix. Computed for blocks of items whose rows of C have at
    most ``block_terms`` products, so a task's memory is bounded whatever its size (a heavier item is a block
    alone). Both (i, j) and (j, i) are emitted, as a self-join would."""
    from scipy import sparse

    batches = list(batches)
    if not batches or not sum(b.num_rows for b in batches):
        return
    table = pa.Table.from_batches(batches)
    baskets = pc.dictionary_encode(table.column("basket_id").combine_chunks())
    item_ids, items = np.unique(table.column("item_id").to_numpy(), return_inverse=True)
    b = sparse.csr_matrix(
        (np.ones(len(items), np.int64), (baskets.indices.to_numpy(), items)),
        shape=(len(baskets.dictionary), len(item_ids)),
    )
    bt = b.T.tocsr()
    products = bt @ np.diff(b.indptr)  # per item: Σ sizes of its baskets, its products in C
    for first, last in _bounded_blocks(products, block_terms):
        counts = (bt[first:last] @ b).tocoo()
        rows, cols = counts.row.astype(np.int64) + first, counts.col.astype(np.int64)
        off = rows != cols
        yield pa.RecordBatch.from_arrays(
            [pa.array(item_ids[rows[off]]), pa.array(item_ids[cols[off]]), pa.array(counts.data[off].astype(np.int64))],
            names=list(PAIR_COLUMNS),
        )


def _bounded_blocks(costs: np.ndarray, budget: float) -> Iterator[tuple[int, int]]:
    """Consecutive ranges [first, last) of ``costs`` whose sum is at most ``budget`` (a costlier entry is a range
    alone): what bounds a block's memory in the pair counting and in CF's scoring."""
    ends = np.cumsum(costs)
    first = 0
    while first < len(costs):
        base = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + budget, side="right")))
        yield first, min(last, len(costs))
        first = last


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """1-based position of each entry within its run of equal values in the sorted ``groups``."""
    return np.arange(len(groups)) - np.searchsorted(groups, groups, side="left") + 1


SIMILARITY_SCHEMA = "item_id long, neighbor_item_id long, weight double, support long, rank int"


class NeighbourRanking:
    """Each item's top-K neighbours from the tasks' partial pair counts: counts summed per pair, pairs under the
    minimum support dropped, w_ij = c_ij / (n_i^(1−α) · n_j^α), ranked by weight, then support, then neighbour id.
    Holds n_i of every item (one entry per item), so it is shipped to each task; runs on the executors."""

    def __init__(self, item_ids: np.ndarray, baskets: np.ndarray, *, top_k: int, damping: float, min_support: int):
        order = np.argsort(item_ids)
        self.item_ids, self.baskets = item_ids[order], baskets[order].astype(np.float64)
        self.top_k, self.damping, self.min_support = top_k, damping, min_support

    @classmethod
    def of(cls, holding: pa.Table, **rules: Any) -> NeighbourRanking:
        return cls(holding.column("item_id").to_numpy(), holding.column("baskets").to_numpy(), **rules)

    def top_neighbours(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Rows arrive sorted by item within the task, so every item before the last one of a batch is complete:
        it is ranked then, and only the last item's rows are carried into the next batch."""
        carried = [np.empty(0, np.int64)] * 3
        for batch in batches:
            i, j, c = (
                np.concatenate([carried[n], batch.column(name).to_numpy()]) for n, name in enumerate(PAIR_COLUMNS)
            )
            if not len(i):
                continue
            complete = i != i[-1]
            if complete.any():
                yield self._rank(i[complete], j[complete], c[complete])
            carried = [i[~complete], j[~complete], c[~complete]]
        if len(carried[0]):
            yield self._rank(*carried)

    def _rank(self, i: np.ndarray, j: np.ndarray, c: np.ndarray) -> pa.RecordBatch:
        order = np.lexsort((j, i))
        i, j, c = i[order], j[order], c[order]
        first = np.concatenate([[True], (i[1:] != i[:-1]) | (j[1:] != j[:-1])])
        starts = np.flatnonzero(first)
        i, j, support = i[starts], j[starts], np.add.reduceat(c, starts)
        kept = support >= self.min_support
        i, j, support = i[kept], j[kept], support[kept]
        n_i = self.baskets[np.searchsorted(self.item_ids, i)]
        n_j = self.baskets[np.searchsorted(self.item_ids, j)]
        weight = support / (np.power(n_i, 1 - self.damping) * np.power(n_j, self.damping))
        order = np.lexsort((j, -support, -weight, i))
        i, j, support, weight = i[order], j[order], support[order], weight[order]
        rank = _rank_within(i)
        best = rank <= self.top_k
        return pa.RecordBatch.from_arrays(
            [pa.array(i[best], pa.int64()), pa.array(j[best], pa.int64()), pa.array(weight[best], pa.float64()),
             pa.array(support[best], pa.int64()), pa.array(rank[best], pa.int32())],
            names=["item_id", "neighbor_item_id", "weight", "support", "rank"],
        )  # fmt: skip


def transform_user_ratings(interactions: DataFrame, user_items: int) -> DataFrame:
    """(user_id, item_ids, item_scores): each user's ``user_items`` highest-scored items j with r(u, j) > 0, in
    rank order, and their r(u, j) — the terms the CF formula sums over. ``user_items`` stores them per user."""
    strongest = Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id")
    return (
        interactions.filter(F.col("score") > 0)
        .withColumn("position", F.row_number().over(strongest))
        .filter(F.col("position") <= user_items)
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(F.struct("position", "item_id", "score"))).alias("top"))
        .select("user_id", F.col("top.item_id").alias("item_ids"), F.col("top.score").alias("item_scores"))
    )


def transform_cf_recommendations(
    ratings: DataFrame,
    interactions: DataFrame,
    similarity: DataFrame,
    as_of: AsOf,
    *,
    top_n: int,
    max_contributions: int,
) -> DataFrame:
    """Top-N items per user by score(u, i) = Σ_{j∈N(i)} w_ij · r(u, j), bought items excluded.

    ``ratings`` holds each user's r(u, j) as ``item_ids`` and ``item_scores`` (``transform_user_ratings``; gold
    passes the ``user_items`` table it has just written, so the ratings are ranked once); ``interactions`` says
    what each user bought. The sum is a sparse matrix product, users' ratings R times the contribution matrix W
    (W[j, i] = w_ij): a join of ratings with neighbourhoods would shuffle every (user, j, i) term — 50 × 50 per
    user — before summing them. W has one row per item j holding at most ``max_contributions`` entries, so it is
    shipped whole to each task, and the tasks multiply blocks of users with it."""
    rated = ratings.filter(F.size("item_ids") > 0).select(
        "user_id", F.col("item_ids").alias("rated_ids"), F.col("item_scores").alias("ratings")
    )
    bought = (
        interactions.filter(F.col("purchases") > 0).groupBy("user_id").agg(F.collect_list("item_id").alias("bought"))
    )
    closest = Window.partitionBy("neighbor_item_id").orderBy(F.desc("weight"), "item_id")
    contributions = (
        similarity.select("item_id", "neighbor_item_id", "weight")
        .withColumn("reach", F.row_number().over(closest))
        .filter(F.col("reach") <= max_contributions)
        .select("item_id", "neighbor_item_id", "weight")
    )
    matrix = ContributionMatrix.of(contributions.toArrow())
    users = rated.join(bought, on="user_id", how="left")
    top = users.mapInArrow(lambda batches: matrix.recommend(batches, top_n), CF_SCHEMA)
    return as_of.stamp(top).select(*CF_RECOMMENDATIONS.columns)


CF_SCHEMA = "user_id long, item_id long, score double, rank int"


class ContributionMatrix:
    """W[j, i] = w_ij as a CSR matrix over the items that occur in it; runs on the executors."""

    def __init__(self, sources: np.ndarray, targets: np.ndarray, weights: np.ndarray, block_terms: int = 2_000_000):
        from scipy import sparse

        self.block_terms = block_terms  # bounds a block's (user, i) terms, so its memory, whatever the batch size
        self.source_ids, source_index = np.unique(sources, return_inverse=True)
        self.target_ids, target_index = np.unique(targets, return_inverse=True)
        self.w = sparse.csr_matrix(
            (weights, (source_index, target_index)), shape=(len(self.source_ids), len(self.target_ids))
        )
        self.reach = np.diff(self.w.indptr)  # entries per row j: the terms a rating of j adds

    @classmethod
    def of(cls, table: pa.Table) -> ContributionMatrix:
        return cls(
            table.column("neighbor_item_id").to_numpy(),
            table.column("item_id").to_numpy(),
            table.column("weight").to_numpy().astype(np.float64),
        )

    def recommend(self, batches: Iterable[pa.RecordBatch], top_n: int) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            users = batch.column("user_id").to_numpy()
            rated = _flat(batch.column("rated_ids"), batch.column("ratings"))
            bought = _flat(batch.column("bought"))
            for first, last in self._blocks(users, rated):
                yield self._top(users, rated, bought, first, last, top_n)

    def _blocks(self, users: np.ndarray, rated: _Flat) -> Iterator[tuple[int, int]]:
        """User ranges whose rated items add at most ``block_terms`` terms (a heavier user is a block alone)."""
        known, index = _lookup(self.source_ids, rated.values[0])
        terms = np.bincount(rated.rows[known], weights=self.reach[index[known]], minlength=len(users))
        return _bounded_blocks(terms, self.block_terms)

    def _top(self, users: np.ndarray, rated: _Flat, bought: _Flat, first: int, last: int, top_n: int) -> pa.RecordBatch:
        from scipy import sparse

        picked = (rated.rows >= first) & (rated.rows < last)
        items, ratings = rated.values[0][picked], rated.values[1][picked]
        known, index = _lookup(self.source_ids, items)
        r = sparse.csr_matrix(
            (ratings[known].astype(np.float64), (rated.rows[picked][known] - first, index[known])),
            shape=(last - first, len(self.source_ids)),
        )
        scores = (r @ self.w).tocoo()
        rows, targets, values = scores.row.astype(np.int64), scores.col.astype(np.int64), scores.data
        in_block = (bought.rows >= first) & (bought.rows < last)
        known_bought, bought_index = _lookup(self.target_ids, bought.values[0][in_block])
        bought_keys = (bought.rows[in_block][known_bought] - first) * len(self.target_ids) + bought_index[known_bought]
        keep = ~np.isin(rows * len(self.target_ids) + targets, bought_keys)
        rows, item_ids, values = rows[keep], self.target_ids[targets[keep]], values[keep]
        contenders = _at_least_nth_best(rows, values, last - first, top_n)
        rows, item_ids, values = rows[contenders], item_ids[contenders], values[contenders]
        order = np.lexsort((item_ids, -values, rows))  # per user: score descending, then item id
        rows, item_ids, values = rows[order], item_ids[order], values[order]
        rank = _rank_within(rows)
        best = rank <= top_n
        return pa.RecordBatch.from_arrays(
            [pa.array(users[first:last][rows[best]], pa.int64()), pa.array(item_ids[best], pa.int64()),
             pa.array(values[best], pa.float64()), pa.array(rank[best], pa.int32())],
            names=["user_id", "item_id", "score", "rank"],
        )  # fmt: skip


def _at_least_nth_best(rows: np.ndarray, values: np.ndarray, n_rows: int, n: int) -> np.ndarray:
    """Mask of the entries whose value is at least their row's n-th largest (ties included), for row-sorted
    ``rows``: only those can make a row's top n, so only they need sorting (sorting every candidate of a block was
    three quarters of CF's time). Rows of more than n entries are padded into dense arrays, one per power-of-two
    width, so the padding never exceeds the entries themselves."""
    counts = np.bincount(rows, minlength=n_rows)
    crowded = np.flatnonzero(counts > n)
    if not len(crowded):
        return np.ones(len(rows), dtype=bool)
    slot = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]  # each entry's position within its row
    widths = 2 ** np.ceil(np.log2(counts[crowded])).astype(np.int64)
    nth_best = np.full(n_rows, -np.inf)
    for width in np.unique(widths):
        group = crowded[widths == width]
        position = np.full(n_rows, -1)
        position[group] = np.arange(len(group))
        member = position[rows] >= 0
        dense = np.full((len(group), int(width)), -np.inf)
        dense[position[rows[member]], slot[member]] = values[member]
        nth_best[group] = -np.partition(-dense, n - 1, axis=1)[:, n - 1]
    return values >= nth_best[rows]


@dataclass(frozen=True)
class _Flat:
    """A batch's list column(s) flattened: each value with the row it came from (null lists hold nothing)."""

    rows: np.ndarray
    values: tuple[np.ndarray, ...]


def _flat(*columns: pa.ListArray) -> _Flat:
    lengths = pc.fill_null(pc.list_value_length(columns[0]), 0).to_numpy()
    rows = np.repeat(np.arange(len(lengths)), lengths)
    return _Flat(rows, tuple(pc.list_flatten(c).to_numpy(zero_copy_only=False) for c in columns))


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in ``sorted_ids``, and which ids are there at all."""
    index = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
    known = sorted_ids[index] == ids if len(sorted_ids) else np.zeros(len(ids), dtype=bool)
    return known, index


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
        users.join(transform_user_ratings(interactions, user_items), on="user_id", how="left")
        .join(bought, on="user_id", how="left")
        .select(
            "user_id",
            F.coalesce("item_ids", F.array().cast("array<long>")).alias("item_ids"),
            F.coalesce("item_scores", F.array().cast("array<double>")).alias("item_scores"),
            F.coalesce("bought_item_ids", F.array().cast("array<long>")).alias("bought_item_ids"),
        )
    ).select(*USER_ITEMS.columns)
