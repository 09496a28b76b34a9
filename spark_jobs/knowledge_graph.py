"""The product knowledge graph: ``kg_nodes`` (items, categories, brands, concepts) and ``kg_edges``.

Edges come from three sources, recorded in ``source``:
- catalog: ``IN_CATEGORY`` item → leaf category, ``SUBCATEGORY_OF`` category → parent (the dotted path), and
  ``HAS_BRAND`` item → brand; weight 1.
- behaviour (the non-bot silver sessions of the history window): ``CO_VIEWED_WITH`` and ``CO_PURCHASED_WITH``
  (both items in one session), ``BOUGHT_AFTER_VIEWING`` (i viewed, then j bought later in the session). ``support``
  counts the sessions; ``weight`` is the lift, support · S / (n_i · n_j), with S the sessions that could show the
  pair and n the sessions showing each side — above 1 means more often together than chance.
- embedding: ``SIMILAR_TO`` item → its top-K cosine neighbours, found exactly (every pair scored, in blocks that
  bound memory) with torch on the GPU or CPU; ``HAS_CONCEPT`` item → concepts of the versioned vocabulary
  (``shoplake/concepts.yaml``) whose description embedding is close enough. Weight: the cosine.

Category and brand nodes carry the centroid of their items' embeddings (normalised); concept nodes carry their
description's embedding. The graph is rebuilt whole each run (both tables overwritten), so a rerun gives the same
graph. The run records how many ``SIMILAR_TO`` pairs share a leaf category, a sanity check on the embeddings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

import shoplake
from shoplake import storage
from shoplake.catalog import ITEM_EMBEDDINGS, ITEMS, KG_EDGES, KG_NODES, SILVER_EVENTS
from shoplake.encoder import ModelSpec, TextEncoder, resolve_device
from shoplake.errors import ShoplakeError, TableNotFoundError
from shoplake.run_metrics import record_metrics
from shoplake.settings import Settings, get_settings
from spark_jobs.silver import check_history_window

log = logging.getLogger(__name__)
VOCABULARY = Path(shoplake.__file__).resolve().parent / "concepts.yaml"
RELATIONS = (
    "IN_CATEGORY", "SUBCATEGORY_OF", "HAS_BRAND", "SIMILAR_TO", "CO_VIEWED_WITH", "CO_PURCHASED_WITH",
    "BOUGHT_AFTER_VIEWING", "HAS_CONCEPT",
)  # fmt: skip
NODE_TYPES = ("item", "category", "brand", "concept")
EMBEDDING_ROWS_SCHEMA = "node_id string, embedding array<float>"


@dataclass(frozen=True)
class Concept:
    id: str
    name: str
    description: str


@dataclass(frozen=True)
class Vocabulary:
    version: int
    concepts: tuple[Concept, ...]


@dataclass(frozen=True)
class GraphResult:
    nodes: dict[str, int]  # per node type
    edges: dict[str, int]  # per relation
    similar_same_category_share: float | None  # None when no SIMILAR_TO edge was found
    versions: dict[str, int]


def load_vocabulary(path: Path = VOCABULARY) -> Vocabulary:
    try:
        raw = yaml.safe_load(path.read_text())
        concepts = tuple(Concept(str(c["id"]), str(c["name"]), str(c["description"])) for c in raw["concepts"])
        version = int(raw["version"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as error:
        raise ShoplakeError(f"{path}: not a concept vocabulary ({error})") from error
    ids = [c.id for c in concepts]
    if len(set(ids)) != len(ids):
        raise ShoplakeError(f"{path}: concept ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return Vocabulary(version, concepts)


# --- node ids: one spelling everywhere ---------------------------------------------------------------------------


def item_node(column: str = "item_id") -> Column:
    return F.concat(F.lit("item:"), F.col(column).cast("string"))


def leaf_category_node() -> Column:
    """The dotted path when known, else the shop's numeric category id (REES46 leaves many paths empty)."""
    return F.coalesce(
        F.concat(F.lit("category:"), F.col("category_code")),
        F.concat(F.lit("category:#"), F.col("category_id").cast("string")),
    )


def category_path_nodes() -> Column:
    """Every ancestor of the leaf, root first: a.b.c → [category:a, category:a.b, category:a.b.c]."""
    parts = F.split(F.col("category_code"), r"\.")
    prefixes = F.transform(
        F.sequence(F.lit(1), F.size(parts)),
        lambda n: F.concat(F.lit("category:"), F.array_join(F.slice(parts, 1, n), ".")),
    )
    return F.when(F.col("category_code").isNotNull(), prefixes).otherwise(F.array(leaf_category_node()))


def brand_node() -> Column:
    return F.concat(F.lit("brand:"), F.col("brand"))


# --- catalogue nodes and edges (pure transforms) ---------------------------------------------------------------


def _edges(df: DataFrame, relation: str, source: str, created_at: dt.datetime) -> DataFrame:
    return df.select(
        "src", F.lit(relation).alias("relation"), "dst", F.col("weight").cast("double"),
        F.lit(source).alias("source"), F.col("support").cast("long"),
        F.lit(created_at).cast("timestamp").alias("created_timestamp"),
    ).filter(F.col("src") != F.col("dst"))  # fmt: skip


def transform_taxonomy_edges(items: DataFrame, created_at: dt.datetime) -> DataFrame:
    one = {"weight": F.lit(1.0), "support": F.lit(None)}
    in_category = items.filter(F.col("category_code").isNotNull() | F.col("category_id").isNotNull()).select(
        item_node().alias("src"), leaf_category_node().alias("dst"), *(v.alias(k) for k, v in one.items())
    )
    paths = items.select(category_path_nodes().alias("path")).distinct()
    parents = (
        paths.select(F.explode(F.arrays_zip(F.slice("path", 2, 1_000), F.slice("path", 1, 1_000))).alias("pair"))
        .select(F.col("pair")["0"].alias("src"), F.col("pair")["1"].alias("dst"), *(v.alias(k) for k, v in one.items()))
        .filter(F.col("src").isNotNull())
        .distinct()
    )
    has_brand = items.filter(F.col("brand").isNotNull()).select(
        item_node().alias("src"), brand_node().alias("dst"), *(v.alias(k) for k, v in one.items())
    )
    return (
        _edges(in_category, "IN_CATEGORY", "catalog", created_at)
        .unionByName(_edges(parents, "SUBCATEGORY_OF", "catalog", created_at))
        .unionByName(_edges(has_brand, "HAS_BRAND", "catalog", created_at))
    )


def transform_catalog_nodes(items: DataFrame, created_at: dt.datetime) -> DataFrame:
    """Item, category and brand nodes (no embeddings yet); properties as JSON objects."""
    leaf_words = F.regexp_replace(F.element_at(F.split("category_code", r"\."), -1), "_", " ")
    item_name = F.coalesce(
        F.col("title"), F.concat_ws(" ", F.col("brand"), leaf_words), F.concat(F.lit("item "), F.col("item_id"))
    )
    item_nodes = items.select(
        item_node().alias("node_id"), F.lit("item").alias("node_type"), item_name.alias("name"),
        F.to_json(F.struct("item_id", "category_code", "category_id", "brand", "price")).alias("properties"),
    )  # fmt: skip
    categories = (
        items.select(F.posexplode(category_path_nodes()).alias("depth", "node_id"))
        .groupBy("node_id")
        .agg((F.max("depth") + 1).alias("level"), F.count(F.lit(1)).alias("items"))
        .filter(F.col("node_id").isNotNull())
    )
    path = F.substring_index(F.col("node_id"), ":", -1)
    category_nodes = categories.select(
        "node_id", F.lit("category").alias("node_type"), path.alias("name"),
        F.to_json(F.struct(path.alias("path"), "level", "items")).alias("properties"),
    )  # fmt: skip
    brand_nodes = (
        items.filter(F.col("brand").isNotNull())
        .groupBy("brand")
        .agg(F.count(F.lit(1)).alias("items"))
        .select(
            brand_node().alias("node_id"), F.lit("brand").alias("node_type"), F.col("brand").alias("name"),
            F.to_json(F.struct("items")).alias("properties"),
        )
    )  # fmt: skip
    return (
        item_nodes.unionByName(category_nodes)
        .unionByName(brand_nodes)
        .withColumn("created_timestamp", F.lit(created_at).cast("timestamp"))
    )


# --- behaviour edges ---------------------------------------------------------------------------------------------


def _session_items(events: DataFrame, event_type: str, basket_items: int, time_name: str) -> DataFrame:
    """(session_id, item_id, time): each session's distinct items of one event type, the most recent first-seen
    ``basket_items`` of them, so a long session cannot explode the pair count."""
    firsts = (
        events.filter(F.col("event_type") == event_type)
        .groupBy("session_id", F.col("product_id").alias("item_id"))
        .agg(F.min("event_time").alias(time_name))
    )
    recent = Window.partitionBy("session_id").orderBy(F.desc(time_name), "item_id")
    return firsts.withColumn("_n", F.row_number().over(recent)).filter(F.col("_n") <= basket_items).drop("_n")


def _lift_edges(
    pairs: DataFrame, left_counts: DataFrame, right_counts: DataFrame, sessions: int, *, min_support: int, top_k: int
) -> DataFrame:
    """(i, j, support) → (src, dst, weight = lift, support), the top-K by support then lift per source item."""
    best = Window.partitionBy("i").orderBy(F.desc("support"), F.desc("weight"), "j")
    return (
        pairs.groupBy("i", "j")
        .agg(F.count(F.lit(1)).alias("support"))
        .filter(F.col("support") >= min_support)
        .join(left_counts.withColumnRenamed("item_id", "i").withColumnRenamed("sessions", "n_i"), "i", "inner")
        .join(right_counts.withColumnRenamed("item_id", "j").withColumnRenamed("sessions", "n_j"), "j", "inner")
        .withColumn("weight", F.col("support") * F.lit(float(sessions)) / (F.col("n_i") * F.col("n_j")))
        .withColumn("_rank", F.row_number().over(best))
        .filter(F.col("_rank") <= top_k)
        .select(item_node("i").alias("src"), item_node("j").alias("dst"), "weight", "support")
    )


def transform_behaviour_edges(
    events: DataFrame, created_at: dt.datetime, *, basket_items: int, min_support: int, top_k: int
) -> DataFrame:
    views = _session_items(events, "view", basket_items, "viewed_at")
    purchases = _session_items(events, "purchase", basket_items, "bought_at")

    def sessions_per_item(df: DataFrame) -> DataFrame:
        return df.groupBy("item_id").agg(F.count(F.lit(1)).alias("sessions"))

    view_counts, purchase_counts = sessions_per_item(views), sessions_per_item(purchases)
    totals = events.agg(
        F.count_distinct(F.when(F.col("event_type") == "view", F.col("session_id"))).alias("viewing"),
        F.count_distinct(F.when(F.col("event_type") == "purchase", F.col("session_id"))).alias("buying"),
    ).collect()[0]
    viewing, buying = int(totals["viewing"]), int(totals["buying"])

    def co_occurring(df: DataFrame) -> DataFrame:
        a, b = df.alias("a"), df.alias("b")
        return (
            a.join(b, on="session_id", how="inner")
            .select(F.col("a.item_id").alias("i"), F.col("b.item_id").alias("j"))
            .filter(F.col("i") != F.col("j"))
        )

    viewed_then_bought = (
        views.alias("v")
        .join(purchases.alias("p"), on="session_id", how="inner")
        .filter((F.col("v.item_id") != F.col("p.item_id")) & (F.col("v.viewed_at") < F.col("p.bought_at")))
        .select(F.col("v.item_id").alias("i"), F.col("p.item_id").alias("j"))
    )
    limits = {"min_support": min_support, "top_k": top_k}
    return (
        _edges(_lift_edges(co_occurring(views), view_counts, view_counts, viewing, **limits),
               "CO_VIEWED_WITH", "behaviour", created_at)
        .unionByName(_edges(_lift_edges(co_occurring(purchases), purchase_counts, purchase_counts, buying, **limits),
                            "CO_PURCHASED_WITH", "behaviour", created_at))
        .unionByName(_edges(_lift_edges(viewed_then_bought, view_counts, purchase_counts, viewing, **limits),
                            "BOUGHT_AFTER_VIEWING", "behaviour", created_at))
    )  # fmt: skip


# --- embedding edges (torch, on the driver) ----------------------------------------------------------------------


def rows_per_block(n: int, block_mb: int) -> int:
    """Rows whose float32 scores against all ``n`` rows fit in ``block_mb``."""
    return max(1, min(n, block_mb * 2**20 // (4 * max(n, 1))))


def top_k_neighbours(
    vectors: np.ndarray, k: int, min_similarity: float, *, device: str = "cpu", block_rows: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of every row (rows are unit vectors), self excluded.

    Scores are computed for ``block_rows`` rows against all rows at a time, so memory stays bounded however many
    items there are. Returns (row, neighbour, similarity) arrays, similarity ≥ ``min_similarity``."""
    import torch

    n = len(vectors)
    k = min(k, n - 1)
    if k <= 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float32)
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)
    block = block_rows
    rows, cols, sims = [], [], []
    with torch.inference_mode():
        for start in range(0, n, block):
            scores = matrix[start : start + block] @ matrix.T
            own = torch.arange(scores.shape[0], device=scores.device)
            scores[own, own + start] = -torch.inf
            values, indices = scores.topk(k, dim=1)
            keep = values >= min_similarity
            rows.append((own.unsqueeze(1).expand_as(indices)[keep] + start).cpu().numpy())
            cols.append(indices[keep].cpu().numpy())
            sims.append(values[keep].float().cpu().numpy())
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)


def concept_matches(
    vectors: np.ndarray, concept_vectors: np.ndarray, threshold: float, max_per_item: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, concept, cosine) for each item's best ``max_per_item`` concepts at or above ``threshold``."""
    scores = vectors @ concept_vectors.T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :max_per_item]
    best_scores = np.take_along_axis(scores, best, axis=1)
    rows, rank = np.nonzero(best_scores >= threshold)
    return rows, best[rows, rank], best_scores[rows, rank]


def centroids(vectors: np.ndarray, groups: pa.ListArray) -> tuple[list[str], np.ndarray]:
    """Normalised mean vector of the rows in each group; ``groups[i]`` lists the groups row i belongs to."""
    flat = pc.list_flatten(groups)
    parents = pc.list_parent_indices(groups).to_numpy()
    valid = pc.is_valid(flat).to_numpy(zero_copy_only=False)
    names, inverse = np.unique(np.asarray(flat.to_pylist(), dtype=object)[valid].astype(str), return_inverse=True)
    sums = np.zeros((len(names), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors[parents[valid]])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return names.tolist(), (sums / np.where(norms == 0, 1, norms)).astype(np.float32)


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    values = pc.list_flatten(column.combine_chunks()).to_numpy(zero_copy_only=False)
    return values.astype(np.float32).reshape(-1, dim)


def _embedding_edges(
    spark: SparkSession, rows: dict[str, np.ndarray], relation: str, created_at: dt.datetime
) -> DataFrame:
    table = pa.table({"src": rows["src"], "dst": rows["dst"], "weight": rows["weight"].astype(np.float64)})
    df = (
        spark.createDataFrame(table)
        if table.num_rows
        else spark.createDataFrame([], "src string, dst string, weight double")
    )
    return _edges(df.withColumn("support", F.lit(None)), relation, "embedding", created_at)


def _embedding_frame(spark: SparkSession, node_ids: Sequence[str], vectors: np.ndarray) -> DataFrame:
    if not len(node_ids):
        return spark.createDataFrame([], EMBEDDING_ROWS_SCHEMA)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])
    return spark.createDataFrame(
        pa.table({"node_id": pa.array(list(node_ids), pa.string()), "embedding": flat.cast(pa.list_(pa.float32()))})
    )


# --- the run -------------------------------------------------------------------------------------------------------


def run_knowledge_graph(
    spark: SparkSession,
    as_of_date: dt.date,
    *,
    run_id: str,
    created_at: dt.datetime,
    settings: Settings | None = None,
    vocabulary: Vocabulary | None = None,
) -> GraphResult:
    settings = settings or get_settings()
    vocabulary = vocabulary or load_vocabulary()
    spec = ModelSpec.from_path(settings.model_path)
    if storage.table_version(ITEMS) is None:
        raise TableNotFoundError("items is empty: run `shoplake gold` (or land a catalogue) first")
    if storage.table_version(ITEM_EMBEDDINGS) is None:
        raise TableNotFoundError("item_embeddings is empty: run `shoplake embed` first")
    check_history_window("knowledge graph", as_of_date, settings.history_days)  # the one current graph: keep it
    items = storage.read_table(spark, ITEMS)
    embeddings = storage.read_table(spark, ITEM_EMBEDDINGS).filter(F.col("model") == spec.name)

    # Driver side: the embedding matrix once, for neighbours, concepts and centroids.
    embedded = (
        embeddings.join(items, on="item_id", how="inner")
        .select(
            item_node().alias("node_id"), "embedding", leaf_category_node().alias("leaf"),
            F.concat(category_path_nodes(), F.when(F.col("brand").isNotNull(), F.array(brand_node()))
                     .otherwise(F.array())).alias("groups"),
        )
        .orderBy("node_id")
        .toArrow()
    )  # fmt: skip
    node_ids = np.asarray(embedded.column("node_id").to_pylist(), dtype=object)
    vectors = _vectors(embedded.column("embedding"), spec.dim) if len(node_ids) else np.empty((0, spec.dim), np.float32)
    device = resolve_device(settings.device)
    src, dst, sim = top_k_neighbours(
        vectors,
        settings.kg_similar_top_k,
        settings.kg_min_similarity,
        device=device,
        block_rows=rows_per_block(len(vectors), settings.kg_block_mb),
    )
    leaf = np.asarray(embedded.column("leaf").to_pylist(), dtype=object)
    same_category = float(np.mean(leaf[src] == leaf[dst])) if len(src) else None

    encoder = TextEncoder(spec.path, device=device)
    concept_vectors = encoder.encode([c.description for c in vocabulary.concepts])
    concept_ids = np.asarray([f"concept:{c.id}" for c in vocabulary.concepts], dtype=object)
    c_rows, c_cols, c_sims = concept_matches(
        vectors, concept_vectors, settings.concept_threshold, settings.concept_max_per_item
    )
    group_names, group_vectors = (
        centroids(vectors, embedded.column("groups").combine_chunks()) if len(node_ids) else ([], vectors)
    )

    edges = (
        transform_taxonomy_edges(items, created_at)
        .unionByName(_embedding_edges(spark, {"src": node_ids[src], "dst": node_ids[dst], "weight": sim},
                                      "SIMILAR_TO", created_at))
        .unionByName(_embedding_edges(spark, {"src": node_ids[c_rows], "dst": concept_ids[c_cols], "weight": c_sims},
                                      "HAS_CONCEPT", created_at))
        .unionByName(transform_behaviour_edges(
            _history(spark, as_of_date, created_at, settings), created_at, basket_items=settings.similarity_basket_items,
            min_support=settings.kg_behaviour_min_support, top_k=settings.kg_behaviour_top_k))
    )  # fmt: skip

    concept_nodes = spark.createDataFrame(
        [(f"concept:{c.id}", "concept", c.name, _json({"description": c.description, "vocabulary_version": vocabulary.version}))
         for c in vocabulary.concepts],
        "node_id string, node_type string, name string, properties string",
    ).withColumn("created_timestamp", F.lit(created_at).cast("timestamp"))  # fmt: skip
    node_embeddings = (
        embeddings.select(item_node().alias("node_id"), "embedding")
        .unionByName(_embedding_frame(spark, group_names, group_vectors))
        .unionByName(_embedding_frame(spark, list(concept_ids), concept_vectors))
    )
    nodes = (
        transform_catalog_nodes(items, created_at)
        .unionByName(concept_nodes)
        .join(node_embeddings, on="node_id", how="left")
    )
    versions = {
        KG_NODES.name: storage.write_table(nodes, KG_NODES, "overwrite", run_id=run_id).version,
        KG_EDGES.name: storage.write_table(edges, KG_EDGES, "overwrite", run_id=run_id).version,
    }
    node_counts = _counts(storage.read_table(spark, KG_NODES), "node_type")
    edge_counts = _counts(storage.read_table(spark, KG_EDGES), "relation")
    metrics: dict[str, float] = {f"nodes_{k}": v for k, v in node_counts.items()}
    metrics |= {f"edges_{k}": v for k, v in edge_counts.items()}
    if same_category is not None:
        metrics["similar_same_category_share"] = round(same_category, 4)
    record_metrics(spark, run_id, "kg", metrics, recorded_at=created_at, run_date=as_of_date)
    result = GraphResult(node_counts, edge_counts, same_category, versions)
    log.info("knowledge graph: %s", result)
    return result


def _history(spark: SparkSession, as_of_date: dt.date, created_at: dt.datetime, settings: Settings) -> DataFrame:
    """Gold's history window (no silver yet: no behaviour edges, rather than an error)."""
    from spark_jobs.gold import read_history
    from spark_jobs.interactions import AsOf

    if storage.table_version(SILVER_EVENTS) is None:
        return spark.createDataFrame([], SILVER_EVENTS.schema)
    return read_history(spark, AsOf(as_of_date, created_at), settings.history_days)


def _counts(df: DataFrame, column: str) -> dict[str, int]:
    return {row[column]: int(row["count"]) for row in df.groupBy(column).count().orderBy(column).collect()}


def _json(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def main(argv: Sequence[str] | None = None) -> None:
    """spark-submit entry point: ``spark_jobs/knowledge_graph.py --date D --run-id R``."""
    from shoplake.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--run-id", default="kg")
    args = parser.parse_args(argv)
    result = run_knowledge_graph(get_spark("kg"), args.date, run_id=args.run_id, created_at=dt.datetime.now(dt.UTC))
    print(result)


if __name__ == "__main__":
    from shoplake.spark_submit import run_as_job

    run_as_job(main)
