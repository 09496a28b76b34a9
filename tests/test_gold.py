"""Gold transforms on hand-built events; every expected value is worked out by hand from the rule (and, on the real
sample, by the benchmark's independent SQL reference)."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from bench.etl import disagreements, pipeline_checks
from bench.etl_reference import run_reference
from shoplake import storage
from shoplake.catalog import SILVER_EVENTS
from shoplake.settings import get_settings
from spark_jobs import bronze, gold, silver
from spark_jobs.interactions import AsOf, transform_interactions
from spark_jobs.item_features import transform_item_features
from spark_jobs.items import CATALOG_COLUMNS, transform_catalog, transform_items_from_events
from spark_jobs.similarity import (
    ContributionMatrix,
    NeighbourRanking,
    count_pairs,
    transform_baskets,
    transform_cf_recommendations,
    transform_item_neighbors,
    transform_item_similarity,
    transform_user_items,
    transform_user_ratings,
)
from spark_jobs.user_features import (
    median_price_below,
    price_band,
    quintile_score,
    segment,
    transform_user_features,
)
from tests.conftest import SAMPLE_EVENTS

AS_OF = AsOf(dt.date(2019, 10, 31), computed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
END = dt.datetime(2019, 11, 1)  # the end of the run date, naive UTC as Spark returns it
WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0, "remove_from_cart": -1.0}


def events(spark, rows):
    """rows: (days_before_end, type, item, user, session, category_code, brand, price)."""
    data = []
    for n, (days, kind, item, user, session, code, brand, price) in enumerate(rows):
        time = END - dt.timedelta(days=days)
        data.append((f"e{n}", time, kind, item, None, code, brand, price, user, session, session, False,
                     "f", n, "c", "r", END, time.date()))  # fmt: skip
    return spark.createDataFrame(data, SILVER_EVENTS.schema)


def ev(days, kind, item, user=1, session="s1", code="a.b.c", brand="x", price=10.0):
    return (days, kind, item, user, session, code, brand, price)


def test_decay_halves_the_weight_every_half_life_and_the_score_floors_at_zero(spark):
    rows = [ev(14, "view", 10), ev(28, "purchase", 11), ev(0.0, "cart", 12), ev(1, "remove_from_cart", 13)]
    got = {r.item_id: r for r in transform_interactions(events(spark, rows), AS_OF, WEIGHTS, 14.0).collect()}
    assert got[10].score == pytest.approx(0.5)  # a view exactly one half-life old
    assert got[11].score == pytest.approx(5 * 0.25)  # a purchase two half-lives old
    assert got[12].score == pytest.approx(3.0)  # a cart at the end of the day: no decay
    assert got[13].score == 0.0  # a lone removal is floored at 0
    assert (got[11].purchases, got[11].views, got[13].removes) == (1, 0, 1)
    assert got[10].event_timestamp == END and got[10].as_of_date == AS_OF.date


def test_counts_and_first_last_times_per_pair(spark):
    rows = [ev(3, "view", 10), ev(2, "view", 10), ev(1, "cart", 10), ev(0.5, "purchase", 10)]
    (pair,) = transform_interactions(events(spark, rows), AS_OF, WEIGHTS, 14.0).collect()
    assert (pair.views, pair.carts, pair.purchases) == (2, 1, 1)
    assert (pair.first_event_time, pair.last_event_time) == (END - dt.timedelta(days=3), END - dt.timedelta(days=0.5))
    expected = 2 ** (-3 / 14) + 2 ** (-2 / 14) + 3 * 2 ** (-1 / 14) + 5 * 2 ** (-0.5 / 14)
    assert pair.score == pytest.approx(expected)


def co_occurrence_events(spark):
    """Sessions {A, B}, {A, B}, {A, C} of users 1-3, and user 4 who only saw B. A=1, B=2, C=3."""
    return events(spark, [
        ev(1, "view", 1, user=1, session="s1"), ev(1, "view", 2, user=1, session="s1"),
        ev(1, "view", 1, user=2, session="s2"), ev(1, "view", 2, user=2, session="s2"),
        ev(1, "view", 1, user=3, session="s3"), ev(1, "view", 3, user=3, session="s3"),
        ev(14, "view", 2, user=4, session="s4"),
    ])  # fmt: skip


def test_item_similarity_on_a_hand_built_co_occurrence(spark):
    # Baskets are the 4 sessions and the 4 users' histories (the same item sets here):
    # n_A = 6, n_B = 6, n_C = 2; c_AB = 4, c_AC = 2.
    baskets = transform_baskets(co_occurrence_events(spark), basket_items=20)
    similarity = transform_item_similarity(baskets, AS_OF, top_k=50, damping=0.5, min_support=1)
    got = {(r.item_id, r.neighbor_item_id): (r.weight, r.support, r.rank) for r in similarity.collect()}
    assert got == {
        (1, 2): (pytest.approx(4 / math.sqrt(6 * 6)), 4, 1),
        (1, 3): (pytest.approx(2 / math.sqrt(6 * 2)), 2, 2),
        (2, 1): (pytest.approx(4 / math.sqrt(6 * 6)), 4, 1),
        (3, 1): (pytest.approx(2 / math.sqrt(2 * 6)), 2, 1),
    }
    damped = transform_item_similarity(baskets, AS_OF, top_k=1, damping=1.0, min_support=3)
    assert [(r.item_id, r.neighbor_item_id, r.weight) for r in damped.collect()] == [(1, 2, 4 / 6), (2, 1, 4 / 6)]


@pytest.mark.parametrize("block_terms", [1, 7, 4_000_000])
def test_pair_counts_of_a_task_equal_a_count_of_every_pair_in_every_basket(block_terms):
    """Random baskets in two batches (a basket may span both); small blocks split the items in many ways."""
    from collections import Counter

    rng = np.random.default_rng(3)
    baskets = {f"s:{b}": rng.choice(30, size=rng.integers(1, 8), replace=False) * 1_000_003 for b in range(60)}
    rows = [(basket, int(item)) for basket, items in baskets.items() for item in items]
    rng.shuffle(rows)
    half = len(rows) // 2
    batches = [pa.RecordBatch.from_pylist([{"basket_id": b, "item_id": i} for b, i in part]) for part in
               (rows[:half], rows[half:])]  # fmt: skip
    expected = Counter((int(i), int(j)) for items in baskets.values() for i in items for j in items if i != j)
    got: Counter = Counter()
    for batch in count_pairs(iter(batches), block_terms=block_terms):
        columns = (batch.column(n).to_pylist() for n in ("item_id", "neighbor_item_id", "support"))
        for i, j, c in zip(*columns, strict=True):
            assert (i, j) not in got  # one row per pair within a task
            got[(i, j)] = c
    assert got == expected
    assert list(count_pairs(iter([]))) == []


def test_neighbour_ranking_sums_partial_counts_and_ranks_across_batch_boundaries():
    """Partial counts of one pair from several tasks, rows split into batches mid-item: the same top-K as summing,
    weighting and sorting every pair by the rule (weight, then support descending, then neighbour id)."""
    from collections import Counter

    rng = np.random.default_rng(5)
    n = {item: int(rng.integers(3, 40)) for item in range(25)}
    partial = [(int(i), int(j), int(rng.integers(1, 4))) for i, j in rng.integers(25, size=(600, 2)) if i != j]
    partial += [(30, 4, 1), (30, 3, 2), (30, 2, 2), (30, 4, 1)]  # item 30: three neighbours tied on weight
    n[2] = n[3] = n[4] = n[30] = 10
    partial.sort(key=lambda row: row[0])
    ranking = NeighbourRanking(np.array(list(n)), np.array(list(n.values())), top_k=4, damping=0.7, min_support=2)
    cuts = [0, 1, 57, 58, 300, len(partial)]
    batches = [
        pa.RecordBatch.from_pylist(
            [dict(zip(("item_id", "neighbor_item_id", "support"), row, strict=True)) for row in partial[a:b]]
        )
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    got = [
        row for batch in ranking.top_neighbours(iter(batches)) for row in zip(*batch.to_pydict().values(), strict=True)
    ]

    support = Counter()
    for i, j, c in partial:
        support[(i, j)] += c
    expected = []
    for item in sorted({i for i, _ in support}):
        scored = [(j, c / (n[item] ** 0.3 * n[j] ** 0.7), c) for (i, j), c in support.items() if i == item and c >= 2]
        scored.sort(key=lambda s: (-s[1], -s[2], s[0]))
        expected += [(item, j, pytest.approx(w), c, rank) for rank, (j, w, c) in enumerate(scored[:4], start=1)]
    assert got == expected
    assert [(r[1], r[4]) for r in got if r[0] == 30] == [(2, 1), (3, 2), (4, 3)]  # tied weights: by neighbour id


def test_baskets_keep_only_the_most_recent_items(spark):
    rows = [ev(d, "view", item, user=9, session="s9") for d, item in ((5, 100), (4, 101), (3, 102))]
    baskets = transform_baskets(events(spark, rows), basket_items=2).collect()
    assert sorted((b.basket_id, b.item_id) for b in baskets) == [
        ("s:s9", 101),
        ("s:s9", 102),
        ("u:9", 101),
        ("u:9", 102),
    ]


def test_cf_scores_follow_the_formula_and_skip_what_the_user_bought(spark):
    base = co_occurrence_events(spark)
    similarity = transform_item_similarity(transform_baskets(base, 20), AS_OF, top_k=50, damping=0.5, min_support=1)
    interactions = transform_interactions(base, AS_OF, WEIGHTS, 14.0)
    recommendations = transform_cf_recommendations(
        transform_user_ratings(interactions, 50), interactions, similarity, AS_OF, top_n=10, max_contributions=50
    )
    got = {(r.user_id, r.item_id): (r.score, r.rank) for r in recommendations.collect()}
    # user 4 saw B once, 14 days ago: r(4, B) = 0.5; A has B as a neighbour with w_AB = 4/6.
    assert got[(4, 1)] == (pytest.approx(4 / 6 * 0.5), 1)
    # user 3 saw A and C a day ago (r = 2^(-1/14) each): score(3, B) = w_BA · r(3, A); A and C score each other.
    r = 2 ** (-1 / 14)
    assert got[(3, 2)][0] == pytest.approx(4 / 6 * r)
    assert got[(3, 1)][0] == pytest.approx(2 / math.sqrt(12) * r)
    bought = events(spark, [ev(1, "view", 2, user=4, session="s4"), ev(1, "purchase", 1, user=4, session="s4")])
    interactions = transform_interactions(base.unionByName(bought), AS_OF, WEIGHTS, 14.0)
    recommendations = transform_cf_recommendations(
        transform_user_ratings(interactions, 50), interactions, similarity, AS_OF, top_n=10, max_contributions=50
    )
    assert (4, 1) not in {(r.user_id, r.item_id) for r in recommendations.collect()}


def test_a_popular_item_contributes_only_to_the_items_closest_to_it(spark):
    base = co_occurrence_events(spark)  # A is a neighbour of B (w = 4/6) and of C (w = 2/sqrt(12) ≈ 0.577)
    similarity = transform_item_similarity(transform_baskets(base, 20), AS_OF, top_k=50, damping=0.5, min_support=1)
    interactions = transform_interactions(base, AS_OF, WEIGHTS, 14.0)
    ratings = transform_user_ratings(interactions, 50)
    capped = transform_cf_recommendations(ratings, interactions, similarity, AS_OF, top_n=10, max_contributions=1)
    by_user = {(r.user_id, r.item_id) for r in capped.collect()}
    assert (3, 2) in by_user  # user 3 saw A: A still adds to B, the item it is closest to
    assert (1, 3) not in by_user  # user 1 saw A and B: A no longer adds to C


def test_cf_scoring_in_blocks_sums_the_formula_ranks_ties_by_item_and_skips_bought_items():
    # W[j, i] = w_ij: item 10 is a neighbour of 1 (0.5) and 2 (0.25); item 20 of 2 (0.75) and 3 (0.25)
    matrix = ContributionMatrix(np.array([10, 10, 20, 20]), np.array([1, 2, 2, 3]), np.array([0.5, 0.25, 0.75, 0.25]))
    batch = pa.RecordBatch.from_pydict(
        {"user_id": [7, 8, 9, 6],
         "rated_ids": [[10, 20], [20], [99], [10]],  # user 9 rated only an item with no neighbourhood
         "ratings": [[2.0, 1.0], [4.0], [1.0], [1.0]],
         "bought": [[2], None, None, []]},
        schema=pa.schema([("user_id", pa.int64()), ("rated_ids", pa.list_(pa.int64())),
                          ("ratings", pa.list_(pa.float64())), ("bought", pa.list_(pa.int64()))]),
    )  # fmt: skip
    expected = {
        # user 7: score(1) = 0.5·2 = 1.0; score(3) = 0.25·1 = 0.25; item 2 (0.25·2 + 0.75·1) was bought
        (7, 1): (1.0, 1), (7, 3): (0.25, 2),
        # user 8: score(2) = 0.75·4 = 3.0, score(3) = 0.25·4 = 1.0
        (8, 2): (3.0, 1), (8, 3): (1.0, 2),
        # user 6: score(1) = 0.5, score(2) = 0.25
        (6, 1): (0.5, 1), (6, 2): (0.25, 2),
    }  # fmt: skip
    for block_terms in (1, 2_000_000):  # one user per block, and all users in one
        matrix.block_terms = block_terms
        rows = pa.Table.from_batches(list(matrix.recommend(iter([batch]), top_n=5))).to_pylist()
        assert {(r["user_id"], r["item_id"]): (r["score"], r["rank"]) for r in rows} == expected
    rng = np.random.default_rng(3)  # many candidates per user, scores with ties: the top n against brute force
    sources, targets = rng.integers(0, 30, 3000), rng.integers(100, 400, 3000)
    weights = rng.integers(1, 4, 3000) / 4
    pairs = {(j, i): w for j, i, w in zip(sources.tolist(), targets.tolist(), weights.tolist(), strict=True)}
    many = ContributionMatrix(*(np.array(c) for c in zip(*((j, i, w) for (j, i), w in pairs.items()), strict=True)))
    users = [{"user_id": u, "rated_ids": rng.choice(30, 5, replace=False).tolist(),
              "ratings": rng.integers(1, 3, 5).astype(float).tolist(), "bought": [int(rng.integers(100, 400))]}
             for u in range(40)]  # fmt: skip
    got = pa.Table.from_batches(list(many.recommend(iter([pa.RecordBatch.from_pylist(users, schema=batch.schema)]), 7)))
    for user in users:
        score: dict[int, float] = {}
        for j, r in zip(user["rated_ids"], user["ratings"], strict=True):
            for (source, i), w in pairs.items():
                if source == j and i not in user["bought"]:
                    score[i] = score.get(i, 0.0) + w * r
        best = sorted(score, key=lambda i: (-score[i], i))[:7]
        mine = [r for r in got.to_pylist() if r["user_id"] == user["user_id"]]
        assert [(r["item_id"], r["rank"]) for r in mine] == [(i, k + 1) for k, i in enumerate(best)]
        assert [r["score"] for r in mine] == pytest.approx([score[i] for i in best])
    tied = ContributionMatrix(np.array([10, 10, 10]), np.array([5, 3, 4]), np.array([0.5, 0.5, 0.5]))
    one = pa.RecordBatch.from_pydict({"user_id": [1], "rated_ids": [[10]], "ratings": [[1.0]], "bought": [None]},
                                     schema=batch.schema)  # fmt: skip
    rows = pa.Table.from_batches(list(tied.recommend(iter([one]), top_n=2))).to_pylist()
    assert [(r["item_id"], r["rank"]) for r in rows] == [(3, 1), (4, 2)]  # equal scores: lower item id first


def test_neighbour_lists_and_user_item_lists_keep_rank_order(spark):
    similarity = spark.createDataFrame(
        [(1, 3, 0.2, 1, 2), (1, 2, 0.9, 4, 1), (2, 1, 0.9, 4, 1)],
        "item_id long, neighbor_item_id long, weight double, support long, rank int",
    )
    got = {
        r.item_id: (r.neighbor_ids, r.neighbor_weights) for r in transform_item_neighbors(similarity, AS_OF).collect()
    }
    assert got == {1: ([2, 3], [0.9, 0.2]), 2: ([1], [0.9])}

    t = dt.datetime(2019, 10, 30)
    interactions = spark.createDataFrame(
        [(7, 10, 1.0, 0, t), (7, 11, 3.0, 1, t), (7, 12, 0.0, 1, t + dt.timedelta(hours=1)), (7, 13, 2.0, 0, t),
         (8, 10, 0.0, 0, t)],
        "user_id long, item_id long, score double, purchases long, last_event_time timestamp",
    )  # fmt: skip
    rows = {r.user_id: r for r in transform_user_items(interactions, AS_OF, user_items=2, bought_items=5).collect()}
    assert (rows[7].item_ids, rows[7].item_scores, rows[7].bought_item_ids) == ([11, 13], [3.0, 2.0], [11, 12])
    assert (rows[8].item_ids, rows[8].item_scores, rows[8].bought_item_ids) == ([], [], [])


@pytest.mark.parametrize(
    ("r", "f", "expected"),
    [(5, 5, "champions"), (5, 4, "champions"), (4, 4, "loyal"), (3, 5, "loyal"), (5, 3, "potential_loyalist"),
     (4, 2, "potential_loyalist"), (5, 1, "new"), (4, 1, "promising"), (3, 3, "need_attention"),
     (3, 2, "about_to_sleep"), (3, 1, "about_to_sleep"), (2, 5, "cant_lose"), (1, 4, "at_risk"), (2, 3, "at_risk"),
     (2, 2, "hibernating"), (1, 1, "hibernating"), (None, None, "browsers")],
)  # fmt: skip
def test_rfm_segment_boundaries(spark, r, f, expected):
    frame = spark.createDataFrame([(r, f)], "r int, f int")
    assert frame.select(segment(F.col("r"), F.col("f"))).first()[0] == expected


def test_quintile_scores_at_the_thresholds(spark):
    frame = spark.createDataFrame([(v,) for v in (0.0, 1.0, 1.5, 4.0, 4.5, None)], "v double")
    higher = [r[0] for r in frame.select(quintile_score(F.col("v"), [1.0, 2.0, 3.0, 4.0])).collect()]
    lower = [r[0] for r in frame.select(quintile_score(F.col("v"), [1.0, 2.0, 3.0, 4.0], False)).collect()]
    assert higher == [1, 1, 2, 4, 5, None]
    assert lower == [5, 5, 4, 2, 1, None]


def test_price_band_is_the_band_of_the_median_price(spark):
    quartiles = [10.0, 20.0, 30.0]
    prices = {1: [5.0, 25.0], 2: [10.0, 10.0, 40.0], 3: [30.0], 4: [19.99, 35.0, 36.0, 1.0], 5: [None],
              6: [29.0, 31.0, 9.0, None]}  # fmt: skip
    frame = spark.createDataFrame([(u, p) for u, ps in prices.items() for p in ps], "user_id long, price double")
    bands = frame.groupBy("user_id").agg(
        *median_price_below(quartiles), F.percentile_approx("price", 0.5).alias("median")
    )
    got = {
        r.user_id: (r.band, r.median)
        for r in bands.select("user_id", "median", price_band(quartiles).alias("band")).collect()
    }
    # the median is the ⌈n/2⌉-th smallest price: 5, 10, 30, 19.99, none, 29
    assert got == {1: ("budget", 5.0), 2: ("mid", 10.0), 3: ("premium", 30.0), 4: ("mid", 19.99), 5: (None, None),
                   6: ("upper", 29.0)}  # fmt: skip
    assert frame.select(price_band(None)).distinct().collect() == [(None,)]  # no priced event in the shop


def test_user_features_windows_affinity_brand_and_conversion(spark):
    rows = [
        ev(0.5, "view", 1, code="electronics.audio", brand="sony", price=100.0),
        ev(0.6, "purchase", 1, code="electronics.audio", brand="sony", price=100.0),
        ev(3, "view", 2, code="electronics.audio", brand="jbl", price=50.0, session="s2"),
        ev(20, "view", 3, code="kids.toys", brand="lego", price=20.0, session="s3"),
        ev(45, "view", 4, code="kids.toys", brand="lego", price=20.0, session="s4"),  # beyond 30 days
    ]
    (user,) = transform_user_features(events(spark, rows), AS_OF).collect()
    assert (user.views_1d, user.views_7d, user.views_30d, user.purchases_1d) == (1, 2, 3, 1)
    assert (user.frequency, user.monetary, user.recency_days) == (1, 100.0, 0)
    assert (user.r_score, user.f_score, user.m_score, user.segment) == (5, 1, 1, "new")
    assert user.top_categories == ["electronics.audio", "kids.toys"]
    assert user.top_category_shares == pytest.approx([3 / 4, 1 / 4])
    assert user.preferred_brand == "sony"  # sony 2 events, jbl 1, lego 1 in the last 30 days
    assert user.view_to_purchase_rate == pytest.approx(1 / 3)  # of 3 items viewed in 30 days, 1 was bought
    assert user.sessions_30d == 3


def test_item_features_smoothed_rates_and_unique_ranks(spark):
    rows = [ev(1, "view", 1, user=u) for u in range(8)] + [ev(1, "cart", 1, user=0), ev(1, "view", 2, user=1),
            ev(1, "cart", 2, user=1), ev(1, "view", 3, code=None, user=2)]  # fmt: skip
    history = events(spark, rows)
    items = transform_items_from_events(history, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    got = {r.item_id: r for r in transform_item_features(history, items, AS_OF, prior_strength=10).collect()}
    prior = 2 / 10  # carts / views over all items in 30 days
    assert got[1].view_to_cart_rate == pytest.approx((1 + 10 * prior) / (8 + 10))
    assert got[2].view_to_cart_rate == pytest.approx((1 + 10 * prior) / (1 + 10))
    assert [got[i].popularity_rank for i in (1, 2, 3)] == [1, 2, 3]
    assert [got[i].category_popularity_rank for i in (1, 2, 3)] == [1, 2, 1]  # item 3 has no category
    assert (got[1].distinct_users_30d, got[1].category_l1, got[1].category_l3) == (8, "a", "c")


def test_item_features_describe_an_item_as_the_items_table_does(spark):
    history = events(spark, [ev(1, "view", 1, code="a.b.c", brand="x"), ev(1, "view", 2, code="a.b", brand="y")])
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    schema = ", ".join(f"{c} string" for c in CATALOG_COLUMNS)
    catalogue = spark.createDataFrame([("1", "Lamp", None, "Home.Lighting", "Lumo", "9.5", None)], schema)
    items = transform_catalog(catalogue, at).unionByName(transform_items_from_events(history, at).filter("item_id = 2"))
    got = {r.item_id: r for r in transform_item_features(history, items, AS_OF, prior_strength=10).collect()}
    catalogued = (got[1].category_code, got[1].category_l1, got[1].category_l2, got[1].brand)
    assert catalogued == ("home.lighting", "home", "lighting", "lumo")  # not the events' a.b.c and x
    assert (got[2].category_code, got[2].category_l3, got[2].brand) == ("a.b", None, "y")


@pytest.mark.slow
def test_gold_on_the_sample_agrees_with_the_sql_reference_and_is_identical_when_rerun(spark, lake):
    """The benchmark's DuckDB reference is a second implementation of silver's rules and every gold table, written
    in SQL from the rules' text: on the real sample, with its dirt, both agree on every table's rows and values."""
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    bronze.land_event_files(spark, [str(SAMPLE_EVENTS)], run_id="r", ingested_at=at)
    silver.run_silver(spark, [dt.date(2019, 10, 1)], run_id="s", processed_at=at)
    first = gold.run_gold(spark, dt.date(2019, 10, 1), run_id="g", computed_at=at)
    assert (
        first.rows["user_features"] == 4_504 and first.rows["item_features"] == 6_493
    )  # users and items in the sample
    assert set(first.seconds) == {t.name for t in gold.GOLD_TABLES} | {"items", "interaction_matrix"}
    reference = run_reference([str(SAMPLE_EVENTS)], dt.date(2019, 10, 1), at, get_settings(), lake / "duckdb")
    assert reference.checks["silver_events"][0] == 17_410  # 17,435 less 5 duplicates, 19 repeats, 1 truncated line
    assert disagreements(pipeline_checks(spark, dt.date(2019, 10, 1), first.matrix_dir), reference.checks) == []
    snapshots = {t.name: storage.read_table(spark, t).collect() for t in gold.GOLD_TABLES}
    second = gold.run_gold(spark, dt.date(2019, 10, 1), run_id="g", computed_at=at)
    assert second.rows == first.rows
    for table in gold.GOLD_TABLES:
        assertDataFrameEqual(storage.read_table(spark, table), snapshots[table.name])
    coo = spark.read.parquet(str(first.matrix_dir / "coo"))
    assert coo.count() == first.rows["interactions"]
    assert coo.agg(F.max("user_index")).first()[0] == first.matrix["users"] - 1


def test_a_date_whose_history_holds_no_events_computes_nothing(spark, lake):
    """A mistyped date (2030 for 2019) computed gold without a user, and its gate published it."""
    from shoplake.errors import DataError

    storage.write_table(events(spark, [ev(1, "view", 1)]), SILVER_EVENTS, "append", run_id="t")
    with pytest.raises(DataError, match=r"gold as of 2030-01-01: silver has no events in the 90 days up to it"):
        gold.run_gold(spark, dt.date(2030, 1, 1), run_id="g", computed_at=AS_OF.computed_at)
    assert all(storage.table_version(t) is None for t in gold.GOLD_TABLES)


def test_a_staged_interaction_matrix_replaces_the_published_one_whole_or_is_dropped(lake):
    settings = get_settings()
    day = dt.date(2019, 10, 1)
    published = gold.matrix_dir(settings, day)
    (published / "coo").mkdir(parents=True)
    (published / "coo" / "old-part.parquet").write_text("old")

    def stage(run_id):
        staged = gold.staged_matrix_dir(settings, day, run_id)
        (staged / "coo").mkdir(parents=True)
        (staged / "coo" / f"{run_id}.parquet").write_text(run_id)
        return staged

    stage("trial-run")
    gold.discard_matrix(settings, day, "trial-run")  # a failed or sampled run: the published matrix stays
    assert [p.name for p in (published / "coo").iterdir()] == ["old-part.parquet"]
    stage("airflow-manual__2019-10-02T00-00-00")
    assert gold.publish_matrix(settings, day, "airflow-manual__2019-10-02T00-00-00") == published
    assert [p.name for p in (published / "coo").iterdir()] == ["airflow-manual__2019-10-02T00-00-00.parquet"]
    assert list((published.parent / ".staged").iterdir()) == []  # nothing left behind
    assert gold.publish_matrix(settings, day, "never-staged") is None  # e.g. gold ran where this lake is not
    assert [p.name for p in (published / "coo").iterdir()] == ["airflow-manual__2019-10-02T00-00-00.parquet"]


def test_items_keep_their_newest_description_through_a_backfill_and_a_trial(spark, lake):
    """``items`` is one current table: gold as of an older date, or on a sample of users, set an event-derived
    item's brand and price back to what that history last saw."""
    from pyspark.sql import Row

    users = spark.createDataFrame([Row(user_id=u) for u in range(1, 40)])
    hashes = users.select("user_id", (F.abs(F.xxhash64("user_id")) % 10_000).alias("bucket")).collect()
    sampled = next(r.user_id for r in hashes if r.bucket < 5_000)  # in a 50 % trial's sample
    left_out = next(r.user_id for r in hashes if r.bucket >= 5_000)  # not in it
    storage.write_table(events(spark, [ev(3, "view", 1, user=sampled, brand="old", price=10.0),
                                       ev(1, "view", 1, user=left_out, brand="new", price=12.0)]),
                        SILVER_EVENTS, "append", run_id="t")  # fmt: skip
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def item_one():
        row = storage.read_table(spark, "items").filter("item_id = 1").collect()[0]
        return row.brand, row.price

    gold.run_gold(spark, dt.date(2019, 10, 31), run_id="g1", computed_at=at)
    assert item_one() == ("new", 12.0)
    gold.run_gold(spark, dt.date(2019, 10, 29), run_id="g2", computed_at=at)  # a backfill: only "old" in its history
    assert item_one() == ("new", 12.0)
    gold.run_gold(spark, dt.date(2019, 10, 31), run_id="g3", computed_at=at, sample_fraction=0.5)
    assert item_one() == ("new", 12.0)
