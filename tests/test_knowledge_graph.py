"""The product knowledge graph on hand-built catalogues and sessions; expected edges worked out by hand."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import ITEMS, SILVER_EVENTS
from shoplake.encoder import TextEncoder
from spark_jobs.embed_items import run_embed
from spark_jobs.knowledge_graph import (
    NODE_TYPES,
    RELATIONS,
    concept_matches,
    load_vocabulary,
    run_knowledge_graph,
    top_k_neighbours,
    transform_behaviour_edges,
    transform_taxonomy_edges,
)

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.date(2019, 10, 1)
LABELS = Path(__file__).parent / "data" / "concept_labels.yaml"


def item(item_id, category_code=None, brand=None, title=None, category_id=None):
    return (item_id, title, None, category_id, category_code, brand, 10.0, None, "catalog", AT)


def events(spark, rows):
    """rows: (session, item, event_type, minute)."""
    data = [
        (f"e{n}", dt.datetime(2019, 10, 1, 10, minute), kind, item, 1, None, None, 10.0, 7, session, session,
         False, "f", n, "c", "r", AT, DAY)
        for n, (session, item, kind, minute) in enumerate(rows)
    ]  # fmt: skip
    return spark.createDataFrame(data, SILVER_EVENTS.schema)


def edge_set(df, relation=None):
    rows = df.filter(df.relation == relation) if relation else df
    return {(r.src, r.dst) for r in rows.collect()}


def test_taxonomy_edges_follow_the_dotted_path(spark):
    items = spark.createDataFrame([
        item(1, "electronics.audio.headphone", "sony"),
        item(2, "electronics.audio.headphone", "jbl"),
        item(3, category_id=77),  # REES46: no path, only the shop's category id
        item(4, "kids", "lego"),
    ], ITEMS.schema)  # fmt: skip
    edges = transform_taxonomy_edges(items, AT)
    assert edge_set(edges, "IN_CATEGORY") == {
        ("item:1", "category:electronics.audio.headphone"), ("item:2", "category:electronics.audio.headphone"),
        ("item:3", "category:#77"), ("item:4", "category:kids"),
    }  # fmt: skip
    assert edge_set(edges, "SUBCATEGORY_OF") == {
        ("category:electronics.audio.headphone", "category:electronics.audio"),
        ("category:electronics.audio", "category:electronics"),
    }
    assert edge_set(edges, "HAS_BRAND") == {("item:1", "brand:sony"), ("item:2", "brand:jbl"), ("item:4", "brand:lego")}
    assert {(r.weight, r.source) for r in edges.collect()} == {(1.0, "catalog")}


SESSIONS = [
    ("s1", "A", "view", 1), ("s1", "B", "view", 2), ("s1", "B", "purchase", 3),
    ("s2", "A", "view", 1), ("s2", "B", "view", 2),
    ("s3", "A", "view", 1), ("s3", "C", "view", 2), ("s3", "A", "purchase", 3),
    ("s4", "D", "view", 1),
    ("s5", "B", "view", 1), ("s5", "C", "view", 2),
    ("s6", "E", "purchase", 1), ("s6", "F", "purchase", 2),
    ("s7", "G", "purchase", 1), ("s7", "H", "view", 2),  # bought before viewing: no BOUGHT_AFTER_VIEWING
]  # fmt: skip
ITEM_NUMBER = {name: n for n, name in enumerate("ABCDEFGH", start=1)}


def test_behaviour_edges_count_sessions_and_lift(spark):
    rows = [(s, ITEM_NUMBER[i], kind, minute) for s, i, kind, minute in SESSIONS]
    edges = transform_behaviour_edges(events(spark, rows), AT, basket_items=20, min_support=1, top_k=20)
    got = {(r.relation, r.src, r.dst): (r.support, round(r.weight, 6)) for r in edges.collect()}
    # 6 sessions view something (n_view: A 3, B 3, C 2); 4 buy something (each bought item once).
    # CO_VIEWED: lift = support * 6 / (n_i * n_j); CO_PURCHASED: support * 4 / (1 * 1);
    # BOUGHT_AFTER_VIEWING: support * 6 / (n_view_i * n_purchase_j).
    a, b, c, e, f = (f"item:{ITEM_NUMBER[x]}" for x in "ABCEF")
    assert got == {
        ("CO_VIEWED_WITH", a, b): (2, round(4 / 3, 6)), ("CO_VIEWED_WITH", b, a): (2, round(4 / 3, 6)),
        ("CO_VIEWED_WITH", a, c): (1, 1.0), ("CO_VIEWED_WITH", c, a): (1, 1.0),
        ("CO_VIEWED_WITH", b, c): (1, 1.0), ("CO_VIEWED_WITH", c, b): (1, 1.0),
        ("CO_PURCHASED_WITH", e, f): (1, 4.0), ("CO_PURCHASED_WITH", f, e): (1, 4.0),
        ("BOUGHT_AFTER_VIEWING", a, b): (1, 2.0), ("BOUGHT_AFTER_VIEWING", c, a): (1, 3.0),
    }  # fmt: skip
    strict = transform_behaviour_edges(events(spark, rows), AT, basket_items=20, min_support=2, top_k=20)
    assert {(r.relation, r.src, r.dst) for r in strict.collect()} == {
        ("CO_VIEWED_WITH", a, b), ("CO_VIEWED_WITH", b, a),
    }  # fmt: skip


def test_exact_top_k_neighbours_do_not_depend_on_the_block_size():
    vectors = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    expected = {
        (0, 1, 0.8),
        (0, 2, 0.6),
        (1, 2, 0.96),
        (1, 0, 0.8),
        (2, 1, 0.96),
        (2, 3, 0.8),
        (3, 2, 0.8),
        (3, 1, 0.6),
    }
    for block_rows in (1, 2, 5):
        rows, cols, sims = top_k_neighbours(vectors, 2, 0.5, block_rows=block_rows)
        assert {(int(r), int(c), round(float(s), 4)) for r, c, s in zip(rows, cols, sims, strict=True)} == expected
    assert len(top_k_neighbours(vectors[:1], 2, 0.5)[0]) == 0  # one item: no neighbour, no self-loop


def test_concepts_are_the_best_few_above_the_threshold():
    items = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], dtype=np.float32)
    concepts = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    rows, cols, sims = concept_matches(items, concepts, threshold=0.5, max_per_item=1)
    assert [(int(r), int(c), round(float(s), 2)) for r, c, s in zip(rows, cols, sims, strict=True)] == [
        (0, 0, 1.0), (1, 1, 0.8),
    ]  # fmt: skip


def test_the_concept_threshold_is_precise_on_hand_labelled_items():
    from shoplake.settings import Settings

    settings = Settings()
    labelled = yaml.safe_load(LABELS.read_text())["items"]
    vocabulary = load_vocabulary()
    encoder = TextEncoder(device="cpu")
    rows, cols, _ = concept_matches(
        encoder.encode([x["text"] for x in labelled]),
        encoder.encode([c.description for c in vocabulary.concepts]),
        settings.concept_threshold,
        settings.concept_max_per_item,
    )
    predicted = [(int(r), vocabulary.concepts[c].id) for r, c in zip(rows, cols, strict=True)]
    correct = sum(concept in labelled[r]["concepts"] for r, concept in predicted)
    labels = sum(len(x["concepts"]) for x in labelled)
    assert correct / len(predicted) >= 0.8
    assert correct / labels >= 0.5  # and it does find concepts: a threshold that tags nothing is not an answer


def test_the_vocabulary_file_is_checked(tmp_path):
    from shoplake.errors import ShoplakeError

    bad = tmp_path / "concepts.yaml"
    bad.write_text(
        "version: 1\nconcepts:\n  - {id: a, name: A, description: x}\n  - {id: a, name: B, description: y}\n"
    )
    with pytest.raises(ShoplakeError, match="concept ids repeat"):
        load_vocabulary(bad)


def test_the_whole_graph_is_consistent_and_rebuilt_identically(spark, lake):
    catalogue = [
        item(1, "kids.toys", "lego", "Lego police station building set"),
        item(2, "kids.toys", "lego", "Lego fire station building set"),
        item(3, "electronics.audio.headphone", "sony", "Sony wireless headphones"),
        item(4, "electronics.audio.headphone", "jbl", "JBL wireless headphones"),
        item(5, "beauty.skincare", "nivea", "Nivea face cream"),
        item(6),  # nothing known: a node, no embedding, no SIMILAR_TO
    ]
    storage.merge_table(spark.createDataFrame(catalogue, ITEMS.schema), ITEMS, run_id="t")
    storage.write_table(events(spark, [("s1", 1, "view", 1), ("s1", 2, "view", 2), ("s2", 1, "view", 1),
                                       ("s2", 2, "view", 3)]), SILVER_EVENTS, "append", run_id="t")  # fmt: skip
    run_embed(spark, run_id="t", embedded_at=AT)
    result = run_knowledge_graph(spark, DAY, run_id="t", created_at=AT)

    nodes = {r.node_id: r for r in storage.read_table(spark, "kg_nodes").collect()}
    edges = storage.read_table(spark, "kg_edges").collect()
    assert {n.node_type for n in nodes.values()} == set(NODE_TYPES)
    assert {e.relation for e in edges} <= set(RELATIONS)
    assert all(e.src in nodes and e.dst in nodes for e in edges), "every edge endpoint is a node"
    assert not [e for e in edges if e.src == e.dst], "no self-loops"
    assert ("item:1", "item:2") in {(e.src, e.dst) for e in edges if e.relation == "CO_VIEWED_WITH"}
    similar = {(e.src, e.dst) for e in edges if e.relation == "SIMILAR_TO"}
    assert ("item:1", "item:2") in similar and ("item:3", "item:4") in similar
    assert not [pair for pair in similar if "item:6" in pair]
    assert 0 < result.similar_same_category_share <= 1

    toys = nodes["category:kids.toys"]
    assert abs(float(np.linalg.norm(toys.embedding)) - 1) < 1e-5  # the centroid, normalised
    assert json.loads(toys.properties) == {"path": "kids.toys", "level": 2, "items": 2}
    assert json.loads(nodes["concept:kids"].properties)["vocabulary_version"] == load_vocabulary().version
    assert nodes["item:6"].embedding is None

    def snapshot():
        edge_rows = storage.read_table(spark, "kg_edges").drop("created_timestamp").collect()
        node_rows = storage.read_table(spark, "kg_nodes").drop("created_timestamp").collect()
        return sorted(map(tuple, edge_rows)), sorted((r.node_id, r.properties) for r in node_rows)

    before = snapshot()
    run_knowledge_graph(spark, DAY, run_id="t2", created_at=AT + dt.timedelta(days=1))
    assert snapshot() == before


def test_a_run_of_an_older_date_builds_the_graph_as_of_the_newest_silver_date(spark, lake):
    """The graph is one current table: a backfill of October 1 must not rebuild it from October 1's history (its
    co-behaviour edges then lost every later day's sessions)."""
    from shoplake.errors import ShoplakeError
    from shoplake.orchestration import graph_date

    with pytest.raises(ShoplakeError, match="silver_events is empty"):
        graph_date(DAY)
    later = events(spark, [("s9", 1, "view", 1)]).withColumn("event_date", F.lit(dt.date(2019, 10, 3)))
    storage.write_table(events(spark, [("s1", 1, "view", 1)]).unionByName(later), SILVER_EVENTS, "append", run_id="t")
    assert graph_date(DAY) == graph_date(None) == dt.date(2019, 10, 3)
    assert graph_date(dt.date(2019, 10, 5)) == dt.date(2019, 10, 5)  # a run for a later day: its own date


def test_a_date_whose_history_holds_no_events_is_refused(spark, lake):
    """A mistyped date (2030 for 2019) rebuilt the one current graph without a single behaviour edge."""
    from shoplake.errors import ShoplakeError
    from spark_jobs.silver import check_history_window

    check_history_window("knowledge graph", dt.date(2030, 1, 1), 90)  # no events yet: a catalogue-only graph is fine
    storage.write_table(events(spark, [("s1", 1, "view", 1)]), SILVER_EVENTS, "append", run_id="t")
    check_history_window("knowledge graph", DAY + dt.timedelta(days=89), 90)  # DAY is the window's first day
    refused = r"no events in the 90 days up to it \(it holds 2019-10-01..2019-10-01\)"
    for day in (dt.date(2030, 1, 1), DAY + dt.timedelta(days=90), DAY - dt.timedelta(days=1)):
        with pytest.raises(ShoplakeError, match=refused):
            check_history_window("knowledge graph", day, 90)
