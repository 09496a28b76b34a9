"""Where each feature view reads: the gold Delta tables.

``local`` (the embedded default): Feast's file offline store reads each Delta table's snapshot through ``deltalake``
(``shoplake.delta_offline_store``; Feast's own read would take every Parquet file in the folder).
``production``: Feast's Spark offline store reads Spark tables that ``shoplake.feature_store`` registers over the
same Delta snapshots (Delta's Spark connector is not needed). Paths and names come from shoplake's settings.
Every gold table is published only after its quality gate passed; a failed gate restores the last published
contents, so the latest version these sources read is always a published one.
"""

from feast import FileSource
from feast.data_format import DeltaFormat
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

from shoplake.settings import get_settings

SPARK_TABLE_PREFIX = "shoplake_"
SOURCE_SUFFIX = "_source"


def gold_source(table: str, timestamp_field: str = "event_timestamp", created: str | None = None):
    settings = get_settings()
    name, description = f"{table}{SOURCE_SUFFIX}", f"gold table {table}"
    if settings.feast_env == "production":
        return SparkSource(name=name, table=f"{SPARK_TABLE_PREFIX}{table}", timestamp_field=timestamp_field,
                           created_timestamp_column=created, description=description)  # fmt: skip
    return FileSource(name=name, path=settings.table_uri(table), file_format=DeltaFormat(),
                      timestamp_field=timestamp_field, created_timestamp_column=created or "",
                      description=description)  # fmt: skip


def gold_table(source_name: str) -> str:
    """The gold table a source of ``gold_source`` reads, from the source's name."""
    return source_name.removesuffix(SOURCE_SUFFIX)


user_features = gold_source("user_features")
user_items = gold_source("user_items")
item_features = gold_source("item_features")
item_neighbors = gold_source("item_neighbors")
category_popular = gold_source("category_popular")
item_embeddings = gold_source("item_embeddings", timestamp_field="embedded_at", created=None)
