"""Items: land an item catalogue (CSV with a header, or JSON lines) into the ``items`` table.

The catalogue is curated data, so a bad row (an id that is not an integer, an id given twice, a price that is
negative or no finite number) stops the landing with an error that names the file and shows the offending rows,
rather than being skipped. Landing upserts on ``item_id``: a newer catalogue replaces older rows for the same
items and keeps the rest. Items the catalogue does not list come from the events (latest category, brand, price);
what a catalogue row leaves out of those, the events fill in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import ITEMS
from shoplake.errors import InputError
from spark_jobs.bronze import file_format, unreadable_file_as_input_error
from spark_jobs.columns import blank_to_null, category_path, finite_number

CATALOG_COLUMNS = ("item_id", "title", "description", "category_code", "brand", "price", "attributes")
EVENT_FIELDS = ("category_id", "category_code", "brand", "price")  # what events tell of an item
CATALOG_SCHEMA = ", ".join(f"`{c}` STRING" for c in CATALOG_COLUMNS)
MAX_EXAMPLES = 5
MISSING_MARKERS = ("n/a", "na", "null", "none", "-")  # how catalogues write "no value", lower-cased


def read_catalog(spark: SparkSession, path: str) -> DataFrame:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    kind = file_format(path)
    if kind == "csv":
        header = spark.read.option("header", True).csv(path).columns
        missing = [c for c in ("item_id",) if c not in header]
        if missing:
            raise InputError(f"{path}: not an item catalogue: header lacks item_id (found {header[:10]})")
        return (
            spark.read.schema(CATALOG_SCHEMA)
            .options(header=True, multiLine=True, escape='"', enforceSchema=False)
            .csv(path)
        )
    return spark.read.schema(CATALOG_SCHEMA).json(path)


def transform_catalog(raw: DataFrame, updated_at: dt.datetime) -> DataFrame:
    """Type the catalogue into the ``items`` schema; ``item_id`` is null where it is not an integer."""
    return raw.select(
        F.col("item_id").try_cast("long").alias("item_id"),
        blank_to_null("title").alias("title"),
        blank_to_null("description").alias("description"),
        F.lit(None).cast("long").alias("category_id"),
        category_path("category_code").alias("category_code"),
        F.lower(blank_to_null("brand")).alias("brand"),
        finite_number("price").alias("price"),  # no finite number: refused by check_catalog, or missing
        blank_to_null("attributes").alias("attributes"),
        F.lit("catalog").alias("source"),
        F.lit(updated_at).cast("timestamp").alias("updated_at"),
    )


def check_catalog(raw: DataFrame, items: DataFrame, path: str) -> None:
    """Refuse the catalogue if any row breaks a rule. A good catalogue costs one pass over the file (every rule
    counted in one aggregation, five passes before); only a refused one is read again, for examples."""
    item_id = F.col("item_id").try_cast("long")
    price = F.lower(blank_to_null("price"))  # "12,50" or "€5" would otherwise land as no price at all
    rules = [
        ("item_id", "an item_id that is not an integer", "", item_id.isNull()),
        ("price", "a price that is not a finite number",
         f" (a missing price is empty or one of {', '.join(MISSING_MARKERS)})",
         price.isNotNull() & ~price.isin(*MISSING_MARKERS) & finite_number("price").isNull()),
        ("price", "a negative price", "", finite_number("price") < 0),
    ]  # fmt: skip
    counts = raw.agg(
        *(F.count_if(rule).alias(f"rule_{i}") for i, (*_, rule) in enumerate(rules)),
        F.count(item_id).alias("ids"),
        F.count_distinct(item_id).alias("distinct_ids"),
    ).collect()[0]  # a global aggregation: one row
    for i, (column, what, hint, rule) in enumerate(rules):
        if counts[f"rule_{i}"]:
            examples = [r[column] for r in raw.filter(rule).limit(MAX_EXAMPLES).collect()]
            raise InputError(f"{path}: {counts[f'rule_{i}']} catalogue rows have {what}, e.g. {examples}{hint}")
    if counts["ids"] != counts["distinct_ids"]:
        repeated = items.groupBy("item_id").count().filter(F.col("count") > 1)
        examples = [r.item_id for r in repeated.limit(MAX_EXAMPLES).collect()]
        raise InputError(f"{path}: item_id given more than once, e.g. {examples}")


def prepare_catalog(spark: SparkSession, path: str, updated_at: dt.datetime) -> DataFrame:
    """The catalogue's items, checked: a bad catalogue is refused whole, before anything is written."""
    raw = read_catalog(spark, path)
    items = transform_catalog(raw, updated_at)
    with unreadable_file_as_input_error():  # the checks read the whole file first
        check_catalog(raw, items, path)
    return items


def merge_catalog(items: DataFrame, *, run_id: str) -> storage.WriteResult:
    """Upsert prepared catalogue items on ``item_id``."""
    return storage.merge_table(items, ITEMS, run_id=run_id)


def land_catalog(spark: SparkSession, path: str, *, run_id: str, updated_at: dt.datetime) -> storage.WriteResult:
    return merge_catalog(prepare_catalog(spark, path, updated_at), run_id=run_id)


def transform_latest_values(events: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Per product (``item_id``): each column's value at the latest event that has one; at equal times, the larger.

    Events are first grouped by product and values, a hash aggregation that leaves a row per distinct combination:
    an aggregate that keeps a string (``max_by``) would make Spark sort every event instead."""
    combinations = events.groupBy("product_id", *columns).agg(F.max("event_time").alias("_seen"))
    latest = [F.max(F.when(F.col(c).isNotNull(), F.struct("_seen", c)))[c].alias(c) for c in columns]
    return combinations.groupBy(F.col("product_id").alias("item_id")).agg(*latest)


def transform_items_from_events(events: DataFrame, updated_at: dt.datetime) -> DataFrame:
    """Items as the events describe them: each product's latest known category, brand and price."""
    return transform_latest_values(events, EVENT_FIELDS).select(
        "item_id",
        F.lit(None).cast("string").alias("title"),
        F.lit(None).cast("string").alias("description"),
        "category_id", "category_code", "brand", "price",
        F.lit(None).cast("string").alias("attributes"),
        F.lit("events").alias("source"),
        F.lit(updated_at).cast("timestamp").alias("updated_at"),
    )  # fmt: skip


def refresh_items_from_events(
    spark: SparkSession, events: DataFrame, *, run_id: str, updated_at: dt.datetime
) -> storage.WriteResult:
    """Upsert event-derived items. A catalogue's item keeps every value the catalogue gives; only the category,
    brand and price it leaves out are taken from the events (a feed of titles alone still gets categories)."""
    derived = transform_items_from_events(events, updated_at)
    if storage.table_version(ITEMS) is not None:
        from_catalog = storage.read_table(spark, ITEMS).filter(F.col("source") == "catalog")
        derived = derived.join(from_catalog.select("item_id"), on="item_id", how="left_anti").unionByName(
            transform_fill_catalog_gaps(from_catalog, derived, updated_at)
        )
    return storage.merge_table(derived, ITEMS, run_id=run_id)


def transform_fill_catalog_gaps(catalog: DataFrame, derived: DataFrame, updated_at: dt.datetime) -> DataFrame:
    """The catalogue's items whose missing category, brand or price the events know, with those filled in."""
    known = derived.select("item_id", *(F.col(c).alias(f"_events_{c}") for c in EVENT_FIELDS))
    gaps = F.lit(False)
    for c in EVENT_FIELDS:
        gaps = gaps | (F.col(c).isNull() & F.col(f"_events_{c}").isNotNull())
    return (
        catalog.join(known, on="item_id", how="inner")
        .filter(gaps)
        .select(*(F.coalesce(c, f"_events_{c}").alias(c) if c in EVENT_FIELDS else F.col(c) for c in ITEMS.columns))
        .withColumn("updated_at", F.lit(updated_at).cast("timestamp"))
    )


def main(argv: Sequence[str] | None = None) -> None:
    from shoplake.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--run-id", default="items")
    args = parser.parse_args(argv)
    print(land_catalog(get_spark("items"), args.path, run_id=args.run_id, updated_at=dt.datetime.now(dt.UTC)))


if __name__ == "__main__":
    from shoplake.spark_submit import run_as_job

    run_as_job(main)
