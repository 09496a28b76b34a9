"""Every Delta table of the lake: name, schema, keys and partitioning, declared once.

The storage layer refuses to write a DataFrame that does not match its table's schema here, so this module is the
contract between stages. Gold tables carry ``event_timestamp`` (feature time) and ``created_timestamp`` so Feast
can join them point-in-time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pyspark.sql import types as T

from shoplake.errors import UnknownTableError


@dataclass(frozen=True)
class TableSpec:
    name: str
    layer: str
    schema: T.StructType
    keys: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    description: str = ""
    columns: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.schema.fieldNames()))
        missing = [c for c in (*self.keys, *self.partition_by) if c not in self.columns]
        if missing:
            raise ValueError(f"table {self.name}: keys/partitions {missing} are not columns")


def _fields(*specs: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, nullable=True) for name, dtype in specs])


# Short names keep the table declarations below readable as tables.
S, L, INT, D = T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType()
TS, DT, B = T.TimestampType(), T.DateType(), T.BooleanType()
FEATURE_TIMES = (("event_timestamp", TS), ("created_timestamp", TS))


def gold_feature_time(date: dt.date) -> dt.datetime:
    """A gold date's ``event_timestamp``: the end of that date (UTC), when its features became true."""
    return dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


RAW_EVENT_COLUMNS = (
    "event_time", "event_type", "product_id", "category_id", "category_code", "brand", "price", "user_id",
    "user_session",
)  # fmt: skip
SOURCE_COLUMNS = (("source_file", S), ("line_number", L), ("file_checksum", S), ("ingest_run_id", S))

BRONZE_EVENTS = TableSpec(
    "bronze_events", "bronze",
    _fields(
        *((c, S) for c in RAW_EVENT_COLUMNS),
        ("field_count", INT), ("raw_line", S), *SOURCE_COLUMNS, ("ingested_at", TS), ("event_date", DT),
    ),
    keys=("file_checksum", "line_number"), partition_by=("event_date",),
    description="Rows exactly as they came (strings). raw_line is kept only when the field count is wrong; "
    "event_date is the parsed UTC date, null when event_time does not parse or lies after ingestion.",
)  # fmt: skip

QUARANTINE_EVENTS = TableSpec(
    "quarantine_events", "bronze",
    _fields(
        *((c, S) for c in RAW_EVENT_COLUMNS),
        ("field_count", INT), ("raw_line", S), *SOURCE_COLUMNS,
        ("reason", S), ("detail", S), ("run_id", S), ("quarantined_at", TS), ("event_date", DT),
    ),
    keys=("file_checksum", "line_number"), partition_by=("event_date",),
    description="Bronze rows that broke a silver rule, with the first rule broken as a reason code.",
)  # fmt: skip

SILVER_EVENTS = TableSpec(
    "silver_events", "silver",
    _fields(
        ("event_id", S), ("event_time", TS), ("event_type", S), ("product_id", L), ("category_id", L),
        ("category_code", S), ("brand", S), ("price", D), ("user_id", L), ("user_session", S), ("session_id", S),
        ("is_bot", B), *SOURCE_COLUMNS, ("processed_at", TS), ("event_date", DT),
    ),
    keys=("event_id",), partition_by=("event_date",),
    description="Typed, deduplicated, sessionised events in UTC.",
)  # fmt: skip

EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase")
COUNT_COLUMN = {"view": "views", "cart": "carts", "remove_from_cart": "removes", "purchase": "purchases"}
WINDOWS_DAYS = (1, 7, 30)

INTERACTIONS = TableSpec(
    "interactions", "gold",
    _fields(
        ("user_id", L), ("item_id", L), ("views", L), ("carts", L), ("removes", L), ("purchases", L),
        ("first_event_time", TS), ("last_event_time", TS), ("score", D), *FEATURE_TIMES, ("as_of_date", DT),
    ),
    keys=("as_of_date", "user_id", "item_id"), partition_by=("as_of_date",),
    description="Per (user, item): counts by event type and the decayed implicit score, as of a date.",
)  # fmt: skip

ITEM_SIMILARITY = TableSpec(
    "item_similarity", "gold",
    _fields(
        ("item_id", L), ("neighbor_item_id", L), ("weight", D), ("support", L), ("rank", INT),
        *FEATURE_TIMES, ("as_of_date", DT),
    ),
    keys=("as_of_date", "item_id", "neighbor_item_id"), partition_by=("as_of_date",),
    description="Top-K item-item neighbours with cosine-like weights and co-occurrence support.",
)  # fmt: skip

CF_RECOMMENDATIONS = TableSpec(
    "cf_recommendations",
    "gold",
    _fields(("user_id", L), ("item_id", L), ("score", D), ("rank", INT), *FEATURE_TIMES, ("as_of_date", DT)),
    keys=("as_of_date", "user_id", "item_id"),
    partition_by=("as_of_date",),
    description="Top-N items per user by the item-based CF score, bought items excluded.",
)

ITEM_NEIGHBORS = TableSpec(
    "item_neighbors", "gold",
    _fields(
        ("item_id", L), ("neighbor_ids", T.ArrayType(L)), ("neighbor_weights", T.ArrayType(D)), *FEATURE_TIMES,
        ("as_of_date", DT),
    ),
    keys=("as_of_date", "item_id"), partition_by=("as_of_date",),
    description="Each item's top-K neighbours as one row (ids and weights by rank), for online lookup.",
)  # fmt: skip

USER_ITEMS = TableSpec(
    "user_items", "gold",
    _fields(
        ("user_id", L), ("item_ids", T.ArrayType(L)), ("item_scores", T.ArrayType(D)),
        ("bought_item_ids", T.ArrayType(L)), *FEATURE_TIMES, ("as_of_date", DT),
    ),
    keys=("as_of_date", "user_id"), partition_by=("as_of_date",),
    description="Each user's highest-scored items r(u, j) and bought items as one row, for online scoring.",
)  # fmt: skip

CATEGORY_POPULAR = TableSpec(
    "category_popular", "gold",
    _fields(("category", S), ("item_ids", T.ArrayType(L)), *FEATURE_TIMES, ("as_of_date", DT)),
    keys=("as_of_date", "category"), partition_by=("as_of_date",),
    description="Most popular items per category path (every level) and of the whole shop ('(all)'): cold starts.",
)  # fmt: skip

USER_FEATURES = TableSpec(
    "user_features", "gold",
    _fields(
        ("user_id", L), ("recency_days", INT), ("frequency", L), ("monetary", D),
        ("r_score", INT), ("f_score", INT), ("m_score", INT), ("segment", S),
        *((f"{COUNT_COLUMN[t]}_{w}d", L) for t in EVENT_TYPES for w in WINDOWS_DAYS),
        ("sessions_30d", L), ("mean_session_seconds", D), ("view_to_purchase_rate", D),
        ("top_categories", T.ArrayType(S)), ("top_category_shares", T.ArrayType(D)),
        ("preferred_brand", S), ("price_band", S), *FEATURE_TIMES, ("as_of_date", DT),
    ),
    keys=("as_of_date", "user_id"), partition_by=("as_of_date",),
    description="RFM, segment, activity windows and category affinity per user, as of a date.",
)  # fmt: skip

ITEM_FEATURES = TableSpec(
    "item_features", "gold",
    _fields(
        ("item_id", L), *((f"{COUNT_COLUMN[t]}_{w}d", L) for t in ("view", "cart", "purchase") for w in WINDOWS_DAYS),
        ("distinct_users_30d", L), ("view_to_cart_rate", D), ("view_to_purchase_rate", D),
        ("popularity_rank", INT), ("category_popularity_rank", INT),
        ("price_mean", D), ("price_min", D), ("price_max", D), ("category_code", S),
        ("category_l1", S), ("category_l2", S), ("category_l3", S), ("brand", S),
        *FEATURE_TIMES, ("as_of_date", DT),
    ),
    keys=("as_of_date", "item_id"), partition_by=("as_of_date",),
    description="Windowed demand, smoothed conversion rates, popularity ranks and price statistics per item.",
)  # fmt: skip

ITEMS = TableSpec(
    "items", "silver",
    _fields(
        ("item_id", L), ("title", S), ("description", S), ("category_id", L), ("category_code", S),
        ("brand", S), ("price", D), ("attributes", S), ("source", S), ("updated_at", TS),
    ),
    keys=("item_id",),
    description="The item catalogue; derived from events (latest category, brand, price) when none is given.",
)  # fmt: skip

ITEM_EMBEDDINGS = TableSpec(
    "item_embeddings", "gold",
    _fields(
        ("item_id", L), ("model", S), ("dim", INT), ("embedding", T.ArrayType(T.FloatType())),
        ("content_hash", S), ("embedded_at", TS),
    ),
    keys=("item_id", "model"),
    description="L2-normalised text embeddings of item metadata, one row per item and model.",
)  # fmt: skip

KG_NODES = TableSpec(
    "kg_nodes", "gold",
    _fields(
        ("node_id", S), ("node_type", S), ("name", S), ("properties", S),
        ("embedding", T.ArrayType(T.FloatType())), ("created_timestamp", TS),
    ),
    keys=("node_id",),
    description="Knowledge-graph nodes: items, categories, brands, concepts; properties as a JSON object.",
)  # fmt: skip

KG_EDGES = TableSpec(
    "kg_edges", "gold",
    _fields(
        ("src", S), ("relation", S), ("dst", S), ("weight", D), ("source", S), ("support", L),
        ("created_timestamp", TS),
    ),
    keys=("src", "relation", "dst"), partition_by=("relation",),
    description="Knowledge-graph edges from the catalogue, behaviour and embeddings.",
)  # fmt: skip

RUN_METRICS = TableSpec(
    "run_metrics", "ops",
    _fields(
        ("run_id", S), ("stage", S), ("metric", S), ("value", D), ("details", S), ("run_date", DT),
        ("recorded_at", TS),
    ),
    keys=("run_id", "stage", "metric"),
    description="One row per measured fact of a run: row counts, reconciliation, quality and evaluation results.",
)  # fmt: skip

PUBLISHED_VERSIONS = TableSpec(
    "published_versions", "ops",
    _fields(("table_name", S), ("version", L), ("run_id", S), ("run_date", DT), ("published_at", TS)),
    keys=("table_name", "version"),
    description="Table versions that passed their quality gate; feature serving reads these, never just the latest.",
)  # fmt: skip

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        BRONZE_EVENTS, QUARANTINE_EVENTS, SILVER_EVENTS, INTERACTIONS, ITEM_SIMILARITY, CF_RECOMMENDATIONS,
        ITEM_NEIGHBORS, USER_ITEMS, CATEGORY_POPULAR, USER_FEATURES, ITEM_FEATURES, ITEMS, ITEM_EMBEDDINGS, KG_NODES, KG_EDGES, RUN_METRICS, PUBLISHED_VERSIONS,
    )
}  # fmt: skip


def get_table(name: str | TableSpec) -> TableSpec:
    """Look a table up by name; an unknown name is an error that lists the known ones."""
    if isinstance(name, TableSpec):
        return name
    try:
        return TABLES[name]
    except KeyError:
        raise UnknownTableError(f"unknown table {name!r}; known tables: {', '.join(sorted(TABLES))}") from None
