"""Quality gates: valid data passes every suite; each critical expectation fails on exactly its defect; a failed
gate publishes nothing and names the table, the expectation and offending rows; the sample passes end to end."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from expectations import (
    interactions,
    item_embeddings,
    item_features,
    kg_edges,
    kg_nodes,
    silver_events,
    user_features,
)
from expectations.gate import Audit, QualityGateError, audit_and_publish, published_version
from expectations.runner import run_suite
from shoplake import storage
from shoplake.catalog import (
    CATEGORY_POPULAR,
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    ITEM_FEATURES,
    KG_EDGES,
    KG_NODES,
    SILVER_EVENTS,
    USER_FEATURES,
)

AT = dt.datetime(2026, 1, 1)
DAY = dt.date(2019, 10, 1)
T1, T2 = dt.datetime(2019, 10, 1, 10), dt.datetime(2019, 10, 1, 11)


def silver_rows():
    def event(n, kind, item, user, price, time=T1, session="s1"):
        return [f"e{n}", time, kind, item, 1, "kids.toys", "lego", price, user, session, session, False,
                "f", n, "c", "r", AT, DAY]  # fmt: skip

    return [event(1, "view", 10, 7, 5.0), event(2, "purchase", 10, 7, 5.0, T2), event(3, "view", 11, 8, None)]


def interaction_rows():
    def row(user, item, views, carts, purchases, score=1.5):
        return [user, item, views, carts, 0, purchases, T1, T2, score, T2, AT, DAY]

    return [row(7, 10, 1, 0, 1), row(8, 11, 1, 3, 0)]


def user_rows():
    base = {c: None for c in USER_FEATURES.columns}
    base |= {"recency_days": 3, "frequency": 2, "monetary": 10.0, "r_score": 5, "f_score": 4, "m_score": 3,
             "segment": "champions", "view_to_purchase_rate": 0.5, "top_categories": ["kids.toys", "auto"],
             "top_category_shares": [0.6, 0.4], "event_timestamp": T2, "created_timestamp": AT, "as_of_date": DAY}  # fmt: skip
    browser = base | {"r_score": None, "f_score": None, "m_score": None, "segment": "browsers",
                      "top_category_shares": [0.25]}  # fmt: skip
    return [list((base | {"user_id": 7}).values()), list((browser | {"user_id": 8}).values())]


def item_rows():
    base = {c: None for c in ITEM_FEATURES.columns}
    base |= {"view_to_cart_rate": 0.1, "view_to_purchase_rate": 0.05, "price_min": 5.0, "category_code": "kids.toys",
             "event_timestamp": T2, "created_timestamp": AT, "as_of_date": DAY}  # fmt: skip
    return [
        list((base | {"item_id": 10, "popularity_rank": 1, "category_popularity_rank": 1}).values()),
        list((base | {"item_id": 11, "popularity_rank": 2, "category_popularity_rank": 2}).values()),
        list((base | {"item_id": 12, "popularity_rank": 3, "category_popularity_rank": 1, "category_code": None}).values()),
    ]  # fmt: skip


def embedding_rows():
    return [[10, "m", 2, [0.6, 0.8], "h1", AT], [11, "m", 2, [1.0, 0.0], "h2", AT]]


def node_rows():
    return [["item:10", "item", "Lego", None, None, AT], ["item:11", "item", "Duplo", None, None, AT],
            ["category:kids", "category", "kids", None, None, AT], ["concept:gift", "concept", "Gift", None, None, AT]]  # fmt: skip


def edge_rows():
    return [
        ["item:10", "IN_CATEGORY", "category:kids", 1.0, "catalog", None, AT],
        ["item:10", "SIMILAR_TO", "item:11", 0.93, "embedding", None, AT],
        ["item:10", "HAS_CONCEPT", "concept:gift", 0.41, "embedding", None, AT],
        ["item:10", "CO_VIEWED_WITH", "item:11", 3.5, "behaviour", 4, AT],
    ]


def set_value(rows, index, column, value, spec):
    rows[index][spec.columns.index(column)] = value
    return rows


# (dataset, defect, rows → rows with the defect, the expectation that must fail)
S, IA, U, IT, E, N, ED = SILVER_EVENTS, INTERACTIONS, USER_FEATURES, ITEM_FEATURES, ITEM_EMBEDDINGS, KG_NODES, KG_EDGES
DEFECTS = [
    ("silver", "user missing", lambda r: set_value(r, 0, "user_id", None, S), ("expect_column_values_to_not_be_null", "user_id")),
    ("silver", "item missing", lambda r: set_value(r, 0, "product_id", None, S), ("expect_column_values_to_not_be_null", "product_id")),
    ("silver", "time missing", lambda r: set_value(r, 0, "event_time", None, S), ("expect_column_values_to_not_be_null", "event_time")),
    ("silver", "session missing", lambda r: set_value(r, 0, "session_id", None, S), ("expect_column_values_to_not_be_null", "session_id")),
    ("silver", "event twice", lambda r: set_value(r, 1, "event_id", "e1", S), ("expect_column_values_to_be_in_set", "event_id_is_unique")),
    ("silver", "unknown type", lambda r: set_value(r, 0, "event_type", "click", S), ("expect_column_values_to_be_in_set", "event_type")),
    ("silver", "free purchase", lambda r: set_value(r, 1, "price", 0.0, S), ("expect_column_values_to_be_in_set", "purchase_has_price")),
    ("silver", "time outside the run", lambda r: set_value(r, 0, "event_time", dt.datetime(2019, 10, 2, 1), S), ("expect_column_values_to_be_in_set", "inside_run_window")),
    ("silver", "every row quarantined", lambda r: [], ("expect_table_row_count_to_be_between", None)),
    ("interactions", "user missing", lambda r: set_value(r, 0, "user_id", None, IA), ("expect_column_values_to_not_be_null", "user_id")),
    ("interactions", "item missing", lambda r: set_value(r, 0, "item_id", None, IA), ("expect_column_values_to_not_be_null", "item_id")),
    *(("interactions", f"negative {c}", lambda r, c=c: set_value(r, 0, c, -1, IA), ("expect_column_values_to_be_between", c))
      for c in ("carts", "removes", "purchases")),
    ("interactions", "negative score", lambda r: set_value(r, 0, "score", -0.5, IA), ("expect_column_values_to_be_between", "score")),
    ("interactions", "negative count", lambda r: set_value(r, 1, "views", -1, IA), ("expect_column_values_to_be_between", "views")),
    ("interactions", "no events", lambda r: [*r[:1], [8, 11, 0, 0, 0, 0, T1, T2, 1.0, T2, AT, DAY]], ("expect_column_values_to_be_between", "events")),
    ("interactions", "last before first", lambda r: set_value(r, 0, "last_event_time", dt.datetime(2019, 10, 1, 9), IA), ("expect_column_pair_values_a_to_be_greater_than_b", "last_event_time vs first_event_time")),
    ("interactions", "orphan user", lambda r: set_value(r, 0, "user_id", 99, IA), ("expect_column_values_to_be_in_set", "user_in_silver")),
    ("interactions", "orphan item", lambda r: set_value(r, 0, "item_id", 99, IA), ("expect_column_values_to_be_in_set", "item_in_silver")),
    ("interactions", "pair twice", lambda r: [*r, list(r[0])], ("expect_compound_columns_to_be_unique", ["user_id", "item_id"])),
    ("users", "R score 6", lambda r: set_value(r, 0, "r_score", 6, U), ("expect_column_values_to_be_between", "r_score")),
    ("users", "F score 0", lambda r: set_value(r, 0, "f_score", 0, U), ("expect_column_values_to_be_between", "f_score")),
    ("users", "M score 6", lambda r: set_value(r, 0, "m_score", 6, U), ("expect_column_values_to_be_between", "m_score")),
    ("users", "unknown segment", lambda r: set_value(r, 0, "segment", "vip", U), ("expect_column_values_to_be_in_set", "segment")),
    ("users", "no segment", lambda r: set_value(r, 0, "segment", None, U), ("expect_column_values_to_not_be_null", "segment")),
    ("users", "negative share", lambda r: set_value(r, 1, "top_category_shares", [-0.1], U), ("expect_column_values_to_be_between", "smallest_share")),
    ("users", "share above 1", lambda r: set_value(r, 1, "top_category_shares", [1.2], U), ("expect_column_values_to_be_between", "largest_share")),
    ("users", "shares above 1 together", lambda r: set_value(r, 0, "top_category_shares", [0.7, 0.5], U), ("expect_column_values_to_be_between", "share_total")),
    ("users", "negative recency", lambda r: set_value(r, 0, "recency_days", -1, U), ("expect_column_values_to_be_between", "recency_days")),
    ("users", "user twice", lambda r: set_value(r, 1, "user_id", 7, U), ("expect_column_values_to_be_unique", "user_id")),
    ("items", "cart rate above 1", lambda r: set_value(r, 0, "view_to_cart_rate", 1.5, IT), ("expect_column_values_to_be_between", "view_to_cart_rate")),
    ("items", "negative purchase rate", lambda r: set_value(r, 0, "view_to_purchase_rate", -0.1, IT), ("expect_column_values_to_be_between", "view_to_purchase_rate")),
    ("items", "rank 0", lambda r: set_value(set_value(r, 0, "popularity_rank", 0, IT), 1, "popularity_rank", 1, IT), ("expect_column_values_to_be_between", "popularity_rank")),
    ("items", "rank twice", lambda r: set_value(r, 1, "popularity_rank", 1, IT), ("expect_column_values_to_be_unique", "popularity_rank")),
    ("items", "category rank 0", lambda r: set_value(set_value(r, 0, "category_popularity_rank", 0, IT), 1, "category_popularity_rank", 1, IT), ("expect_column_values_to_be_between", "category_popularity_rank")),
    ("items", "category rank twice", lambda r: set_value(r, 1, "category_popularity_rank", 1, IT), ("expect_compound_columns_to_be_unique", ["rank_category", "category_popularity_rank"])),
    ("items", "item twice", lambda r: set_value(r, 1, "item_id", 10, IT), ("expect_column_values_to_be_unique", "item_id")),
    ("embeddings", "other dimension", lambda r: set_value(set_value(r, 0, "dim", 3, E), 0, "embedding", [0.6, 0.8, 0.0], E), ("expect_column_values_to_be_in_set", "dim_is_the_models")),
    ("embeddings", "vector shorter than dim", lambda r: set_value(r, 0, "embedding", [1.0], E), ("expect_column_values_to_be_in_set", "length_is_dim")),
    ("embeddings", "NaN", lambda r: set_value(r, 0, "embedding", [math.nan, 1.0], E), ("expect_column_values_to_be_in_set", "has_nan")),
    ("embeddings", "not unit length", lambda r: set_value(r, 0, "embedding", [1.2, 1.6], E), ("expect_column_values_to_be_between", "l2_norm")),
    ("embeddings", "item twice", lambda r: set_value(r, 1, "item_id", 10, E), ("expect_compound_columns_to_be_unique", ["item_id", "model"])),
    ("nodes", "node twice", lambda r: set_value(r, 1, "node_id", "item:10", N), ("expect_column_values_to_be_unique", "node_id")),
    ("nodes", "unknown node type", lambda r: set_value(r, 0, "node_type", "store", N), ("expect_column_values_to_be_in_set", "node_type")),
    ("nodes", "nameless node", lambda r: set_value(r, 0, "name", None, N), ("expect_column_values_to_not_be_null", "name")),
    ("edges", "unknown relation", lambda r: set_value(r, 3, "relation", "LIKES", ED), ("expect_column_values_to_be_in_set", "relation")),
    ("edges", "unknown source", lambda r: set_value(r, 3, "source", "guess", ED), ("expect_column_values_to_be_in_set", "source")),
    ("edges", "edge twice", lambda r: [*r, list(r[0])], ("expect_compound_columns_to_be_unique", ["src", "relation", "dst"])),
    ("edges", "dangling source", lambda r: set_value(r, 1, "src", "item:404", ED), ("expect_column_values_to_be_in_set", "src_is_node")),
    ("edges", "dangling target", lambda r: set_value(r, 1, "dst", "item:404", ED), ("expect_column_values_to_be_in_set", "dst_is_node")),
    ("edges", "cosine above 1", lambda r: set_value(r, 1, "weight", 1.5, ED), ("expect_column_values_to_be_in_set", "weight_in_range")),
    ("edges", "negative lift", lambda r: set_value(r, 3, "weight", -2.0, ED), ("expect_column_values_to_be_in_set", "weight_in_range")),
    ("edges", "item similar to itself", lambda r: set_value(r, 1, "dst", "item:10", ED), ("expect_column_values_to_be_in_set", "similar_to_itself")),
]  # fmt: skip


def prepared(spark, dataset, mutate=lambda rows: rows):
    """The dataset's valid rows (or with one defect) prepared for its suite, and the suite."""

    def df(spec, rows):
        return spark.createDataFrame(rows, spec.schema)

    if dataset == "silver":
        rows = mutate(silver_rows())
        return silver_events.prepare(df(S, rows), first=DAY, last=DAY, quarantine_share=0.0, quarantine_ceiling=0.05), silver_events.suite  # fmt: skip
    if dataset == "interactions":
        history = df(S, silver_rows())
        return interactions.prepare(df(IA, mutate(interaction_rows())), history=history), interactions.suite
    if dataset == "users":
        return user_features.prepare(df(U, mutate(user_rows()))), user_features.suite
    if dataset == "items":
        return item_features.prepare(df(IT, mutate(item_rows()))), item_features.suite
    if dataset == "embeddings":
        return item_embeddings.prepare(df(E, mutate(embedding_rows())), model="m", dim=2), item_embeddings.suite
    if dataset == "nodes":
        return df(N, mutate(node_rows())), kg_nodes.suite
    return kg_edges.prepare(df(ED, mutate(edge_rows())), nodes=df(N, node_rows())), kg_edges.suite


@pytest.mark.parametrize("dataset", ["silver", "interactions", "users", "items", "embeddings", "nodes", "edges"])
def test_valid_data_passes(spark, dataset):
    outcome = run_suite(*prepared(spark, dataset), cache=True)  # as every gate but silver's: 3-4x faster
    assert outcome.passed and not outcome.failures("warning"), [o.describe() for o in outcome.failures("critical")]


@pytest.mark.parametrize(("dataset", "defect", "mutate", "expected"), DEFECTS, ids=[f"{d[0]}: {d[1]}" for d in DEFECTS])
def test_each_critical_expectation_catches_its_defect(spark, dataset, defect, mutate, expected):
    outcome = run_suite(*prepared(spark, dataset, mutate), cache=True)
    failed = {
        (o.expectation, o.column if not isinstance(o.column, list) else tuple(o.column))
        for o in outcome.failures("critical")
    }
    kind, column = expected
    assert (kind, tuple(column) if isinstance(column, list) else column) in failed, failed
    assert not outcome.passed


@pytest.mark.parametrize("broadcast_limit", [100_000, 0], ids=["broadcast", "shuffle join"])
def test_silver_marks_every_row_of_a_duplicated_event_id(spark, broadcast_limit):
    rows = set_value(silver_rows(), 1, "event_id", "e1", S)
    events = spark.createDataFrame(rows, S.schema)
    marked = silver_events.mark_duplicated_ids(events, broadcast_limit=broadcast_limit)
    assert sorted((r.event_id, r.event_id_is_unique) for r in marked.collect()) == [
        ("e1", False), ("e1", False), ("e3", True)
    ]  # fmt: skip


def test_every_critical_expectation_has_a_defect_test():
    covered = {(d[0], d[3][0], str(d[3][1])) for d in DEFECTS}
    suites = {"silver": silver_events.suite, "interactions": interactions.suite, "users": user_features.suite,
              "items": item_features.suite, "embeddings": item_embeddings.suite, "nodes": kg_nodes.suite,
              "edges": kg_edges.suite}  # fmt: skip
    missing = []
    for dataset, suite in suites.items():
        for e in suite.expectations:
            kwargs = e.configuration.kwargs
            column = kwargs.get("column") or kwargs.get("column_list")
            if "column_A" in kwargs:
                column = f"{kwargs['column_A']} vs {kwargs['column_B']}"
            if (
                str(e.severity).split(".")[-1].lower() == "critical"
                and (dataset, e.expectation_type, str(column)) not in covered
            ):
                missing.append((dataset, e.expectation_type, column))
    # the quarantine ceiling is tested through the gate below
    assert missing == [
        ("silver", "expect_column_pair_values_a_to_be_greater_than_b", "quarantine_ceiling vs quarantine_share")
    ]


def test_tables_derived_by_a_stage_are_published_and_put_back_with_the_audited_ones(spark, lake):
    """Gold writes eight tables and audits three; the other five (neighbours, user items, popular items that Feast
    serves) must follow the verdict too. A trial is audited, then everything goes back to its published contents."""
    check = Audit(S, silver_events.suite, lambda df: silver_events.prepare(
        df, first=DAY, last=DAY, quarantine_share=0.0, quarantine_ceiling=0.05))  # fmt: skip

    def write(rows, popular):
        audited = storage.write_table(spark.createDataFrame(rows, S.schema), S, "overwrite", run_id="r").version
        derived = storage.write_table(spark.createDataFrame([["(all)", popular, T2, AT, DAY]], CATEGORY_POPULAR.schema),
                                      CATEGORY_POPULAR, "overwrite", run_id="r").version  # fmt: skip
        return {"silver_events": (check, audited)}, {"category_popular": derived}

    def popular():
        return [r.item_ids for r in storage.read_table(spark, CATEGORY_POPULAR).collect()]

    checks, derived = write(silver_rows(), [10, 11])
    audit_and_publish(spark, checks, derived=derived, run_id="r1", at=AT)
    assert published_version(spark, CATEGORY_POPULAR) == 0

    checks, derived = write(set_value(silver_rows(), 1, "price", -3.0, S), [99])  # a negative price fails silver
    with pytest.raises(QualityGateError):
        audit_and_publish(spark, checks, derived=derived, run_id="r2", at=AT)
    assert popular() == [[10, 11]] and published_version(spark, CATEGORY_POPULAR) == 0

    checks, derived = write(silver_rows()[:2], [42])  # passes its gate, but as a trial
    audit_and_publish(spark, checks, derived=derived, run_id="r3", at=AT, trial=True)
    assert popular() == [[10, 11]] and storage.read_table(spark, S).count() == 3
    assert published_version(spark, CATEGORY_POPULAR) == 0 and published_version(spark, S) == 0


def test_a_trial_on_tables_never_published_leaves_them_as_it_found_them(spark, lake):
    """The first run of a shop may be a trial: its sample must not stay behind as the tables' contents."""
    check = Audit(S, silver_events.suite, lambda df: silver_events.prepare(
        df, first=DAY, last=DAY, quarantine_share=0.0, quarantine_ceiling=0.05))  # fmt: skip
    earlier = storage.write_table(spark.createDataFrame(silver_rows(), S.schema), S, "overwrite", run_id="r0")
    audited = storage.write_table(spark.createDataFrame(silver_rows()[:1], S.schema), S, "overwrite", run_id="r1")
    derived = storage.write_table(spark.createDataFrame([["(all)", [42], T2, AT, DAY]], CATEGORY_POPULAR.schema),
                                  CATEGORY_POPULAR, "overwrite", run_id="r1")  # fmt: skip
    assert (earlier.version, audited.version, derived.version) == (0, 1, 0)
    audit_and_publish(spark, {"silver_events": (check, audited.version)}, derived={"category_popular": 0},
                      run_id="r1", at=AT, trial=True)  # fmt: skip
    assert storage.read_table(spark, S).count() == 3  # the unpublished version before the trial, not its sample
    assert storage.read_table(spark, CATEGORY_POPULAR).count() == 0  # the trial created it: emptied
    assert published_version(spark, S) is None and published_version(spark, CATEGORY_POPULAR) is None


def test_vacuum_keeps_the_files_a_failed_gate_restores(spark, lake):
    """A version written but not yet audited replaces the published one's files; a vacuum then (retention 0, or an
    optimize long ago) must not delete them, or the failed gate that follows cannot put the published version back."""
    from expectations.gate import vacuum_keeping_published

    check = Audit(S, silver_events.suite, lambda df: silver_events.prepare(
        df, first=DAY, last=DAY, quarantine_share=0.0, quarantine_ceiling=0.05))  # fmt: skip
    good = storage.write_table(spark.createDataFrame(silver_rows(), S.schema), S, "overwrite", run_id="r1").version
    audit_and_publish(spark, {"silver_events": (check, good)}, run_id="r1", at=AT)
    broken = set_value(silver_rows()[:2], 1, "price", -3.0, S)
    bad = storage.write_table(spark.createDataFrame(broken, S.schema), S, "overwrite", run_id="r2").version
    removed, retention = vacuum_keeping_published(spark, "silver_events", 0)
    assert removed == [] and retention >= 1  # stretched past the published version's commit
    with pytest.raises(QualityGateError):
        audit_and_publish(spark, {"silver_events": (check, bad)}, run_id="r2", at=AT)
    assert storage.read_table(spark, S).count() == 3  # the published rows, restored
    removed, retention = vacuum_keeping_published(spark, "silver_events", 0)  # latest is published again
    assert retention == 0 and len(removed) == 1  # the failed version's file


def test_a_failed_gate_publishes_nothing_and_names_table_expectation_and_rows(spark, lake):
    good = storage.write_table(spark.createDataFrame(silver_rows(), S.schema), S, "overwrite", run_id="r1").version

    def check(share):
        return Audit(S, silver_events.suite, lambda df: silver_events.prepare(
            df, first=DAY, last=DAY, quarantine_share=share, quarantine_ceiling=0.05))  # fmt: skip

    audit_and_publish(spark, {"silver_events": (check(0.01), good)}, run_id="r1", at=AT)
    assert published_version(spark, S) == good

    broken = set_value(silver_rows(), 1, "price", -3.0, S)
    bad = storage.write_table(spark.createDataFrame(broken, S.schema), S, "overwrite", run_id="r2").version
    with pytest.raises(QualityGateError) as error:
        audit_and_publish(spark, {"silver_events": (check(0.01), bad)}, run_id="r2", at=AT)
    message = str(error.value)
    assert "silver_events v1" in message and "purchase_has_price" in message
    assert "'event_id': 'e2'" in message  # the offending row, by its key
    assert "nothing published" in message
    assert published_version(spark, S) == good  # the last good version keeps serving ...
    latest = storage.read_table(spark, S).orderBy("event_id").collect()
    assert [r.price for r in latest] == [5.0, 5.0, None]  # ... and is the latest again; v1 stays in the history
    assert storage.read_table(spark, S, version=bad).filter(F.col("price") < 0).count() == 1
    assert "serving: silver_events v0" in message

    with pytest.raises(QualityGateError, match="quarantine_ceiling vs quarantine_share"):
        audit_and_publish(spark, {"silver_events": (check(0.2), good)}, run_id="r3", at=AT)

    history = (lake / "reports" / "data_docs" / "runs.html").read_text()
    assert "r1" in history and "FAIL" in history
    assert (lake / "reports" / "data_docs" / "index.html").is_file()
    verdicts = storage.read_table(spark, "run_metrics").filter(F.col("stage") == "quality").collect()
    assert {(r.run_id, r.value) for r in verdicts} == {("r1", 1.0), ("r2", 0.0), ("r3", 0.0)}
