"""Item embeddings: a deterministic text per item, embedded by a transformer only when it changed.

Each item's text is built in Spark from its title, brand, category path (as words), description and key
attributes; its SHA-256 is the content hash. An item is embedded again only when that hash or the model changed,
so a rerun with nothing new embeds nothing. Price is left out of the text on purpose: it changes daily and would
re-embed the catalogue for nothing. Items with no text at all (no title, brand, category or description) are
counted and reported, not embedded: an empty text would give them all the same vector.

``embed_on`` (settings) picks where the model runs: ``driver`` — one process, the GPU task of the daily DAG —
or ``executors`` — ``mapInArrow`` over partitions, one model per executor, for clusters with GPU executors.
Both call the same ``TextEncoder``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import ITEM_EMBEDDINGS, ITEMS
from shoplake.encoder import ModelSpec, TextEncoder, executor_encoder
from shoplake.run_metrics import record_metrics
from shoplake.settings import Settings, get_settings

log = logging.getLogger(__name__)
MAX_DESCRIPTION_CHARS = 2_000  # the model reads 256 tokens at most; a 1 MB description must not reach it
MAX_ATTRIBUTES = 8
EMBEDDING_SCHEMA = "item_id long, embedding array<float>"


@dataclass(frozen=True)
class EmbedResult:
    model: str
    dim: int
    items: int  # items in the items table
    embedded: int  # embedded by this run
    unchanged: int  # already embedded with the same text and model
    without_text: int  # nothing to embed: reported, not embedded
    items_per_second: float
    version: int | None  # item_embeddings version written, None when nothing was embedded


def _words(column: str) -> Column:
    """``appliances.kitchen.kettle`` → ``appliances > kitchen > kettle``: the path as words the model knows."""
    return F.regexp_replace(F.regexp_replace(F.col(column), r"\.", " > "), "_", " ")


def _attributes(column: str) -> Column:
    """``{"colour": "red", "model": 7}`` → ``colour: red, model: 7``; keys sorted, at most MAX_ATTRIBUTES.

    A value that is not a JSON object gives no attribute text rather than an error."""
    entries = F.array_sort(F.map_entries(F.from_json(F.col(column), "map<string,string>")))
    pairs = F.transform(F.slice(entries, 1, MAX_ATTRIBUTES), lambda e: F.concat_ws(": ", e["key"], e["value"]))
    return F.when(F.size(pairs) > 0, F.array_join(pairs, ", "))


def transform_item_texts(items: DataFrame) -> DataFrame:
    """(item_id, text, content_hash): the text the model reads, whitespace-normalised; '' when nothing is known."""
    parts = F.concat_ws(
        ". ",
        F.col("title"),
        F.concat(F.lit("brand: "), F.col("brand")),
        F.concat(F.lit("category: "), _words("category_code")),
        F.substring(F.col("description"), 1, MAX_DESCRIPTION_CHARS),
        _attributes("attributes"),
    )
    text = F.trim(F.regexp_replace(parts, r"\s+", " "))
    return items.select("item_id", text.alias("text")).withColumn("content_hash", F.sha2(F.col("text"), 256))


def transform_items_to_embed(texts: DataFrame, existing: DataFrame | None, model: str) -> DataFrame:
    """Items with text whose (content hash, model) has no embedding yet."""
    todo = texts.filter(F.col("text") != "")
    if existing is None:
        return todo
    done = existing.filter(F.col("model") == model).select("item_id", "content_hash")
    return todo.join(done, on=["item_id", "content_hash"], how="left_anti")


def embed_on_driver(spark: SparkSession, todo: DataFrame, encoder: TextEncoder) -> DataFrame:
    """Collect the texts (a few hundred bytes an item), embed them in this process, hand the vectors back to Spark."""
    table = todo.select("item_id", "text").toArrow()
    vectors = encoder.encode(table.column("text").to_pylist(), show_progress=True)
    embeddings = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), encoder.dim).cast(
        pa.list_(pa.float32())
    )
    arrow = pa.table({"item_id": table.column("item_id"), "embedding": embeddings})
    return spark.createDataFrame(arrow)


def embed_on_executors(todo: DataFrame, settings: Settings) -> DataFrame:
    """The same encoder inside each executor's Python worker; the model is loaded once per worker."""
    model_path = str(settings.model_path) if settings.model_path else None
    device, batch_tokens, cpu_batch = settings.device, settings.embed_batch_tokens, settings.embed_cpu_batch_size
    compile = False  # a partition is too small a run to pay for compiling

    def encode_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        encoder = executor_encoder(model_path, device, batch_tokens, cpu_batch, compile)
        for batch in batches:
            vectors = encoder.encode(batch.column("text").to_pylist())
            flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), encoder.dim)
            yield pa.RecordBatch.from_arrays(
                [batch.column("item_id"), flat.cast(pa.list_(pa.float32()))], names=["item_id", "embedding"]
            )

    return todo.select("item_id", "text").mapInArrow(encode_partition, EMBEDDING_SCHEMA)


def transform_embedding_rows(
    vectors: DataFrame, texts: DataFrame, model: str, dim: int, embedded_at: dt.datetime
) -> DataFrame:
    return vectors.join(texts.select("item_id", "content_hash"), on="item_id", how="inner").select(
        "item_id",
        F.lit(model).alias("model"),
        F.lit(dim).cast("int").alias("dim"),
        "embedding",
        "content_hash",
        F.lit(embedded_at).cast("timestamp").alias("embedded_at"),
    )


def run_embed(
    spark: SparkSession,
    *,
    run_id: str,
    embedded_at: dt.datetime,
    settings: Settings | None = None,
    full_refresh: bool = False,
) -> EmbedResult:
    """Embed new and changed items (``full_refresh``: every item with text, e.g. after a model's weights changed)."""
    settings = settings or get_settings()
    spec = ModelSpec.from_path(settings.model_path)
    texts = transform_item_texts(storage.read_table(spark, ITEMS)).cache()
    try:
        existing = (
            storage.read_table(spark, ITEM_EMBEDDINGS)
            if storage.table_version(ITEM_EMBEDDINGS) is not None and not full_refresh
            else None
        )
        todo = transform_items_to_embed(texts, existing, spec.name).cache()
        counts = texts.agg(F.count("*").alias("items"), F.sum((F.col("text") == "").cast("long")).alias("empty"))
        totals = counts.collect()[0]
        n_items, without_text = int(totals["items"]), int(totals["empty"] or 0)
        n_todo = todo.count()
        version, rate = None, 0.0
        if n_todo and settings.embed_on == "executors":
            started = time.perf_counter()
            rows = transform_embedding_rows(embed_on_executors(todo, settings), todo, spec.name, spec.dim, embedded_at)
            version = storage.merge_table(rows, ITEM_EMBEDDINGS, run_id=run_id).version
            rate = n_todo / (time.perf_counter() - started)  # model loads and the write included
        elif n_todo:
            encoder = TextEncoder(
                spec.path, device=settings.device, batch_tokens=settings.embed_batch_tokens,
                cpu_batch_size=settings.embed_cpu_batch_size, compile=n_todo >= settings.embed_compile_min_items,
                tokenizer_processes=settings.embed_tokenizer_processes,
            )  # fmt: skip
            with contextlib.closing(encoder):  # its tokenizer processes stop once the vectors exist, or on an error
                vectors = embed_on_driver(spark, todo, encoder)
            rows = transform_embedding_rows(vectors, todo, spec.name, spec.dim, embedded_at)
            version = storage.merge_table(rows, ITEM_EMBEDDINGS, run_id=run_id).version
            rate = encoder.last_items_per_second
        todo.unpersist()
    finally:
        texts.unpersist()
    result = EmbedResult(
        model=spec.name, dim=spec.dim, items=n_items, embedded=n_todo,
        unchanged=n_items - without_text - n_todo, without_text=without_text, items_per_second=rate, version=version,
    )  # fmt: skip
    record_metrics(
        spark, run_id, "embed",
        {"items": result.items, "embedded": result.embedded, "unchanged": result.unchanged,
         "without_text": result.without_text, "items_per_second": round(result.items_per_second, 1)},
        recorded_at=embedded_at, details={"embedded": {"model": spec.name, "device": settings.device}},
    )  # fmt: skip
    log.info("item embeddings (%s): %s", spec.name, result)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """spark-submit entry point: ``spark_jobs/embed_items.py --run-id R``."""
    from shoplake.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default="embed")
    args = parser.parse_args(argv)
    print(run_embed(get_spark("embed"), run_id=args.run_id, embedded_at=dt.datetime.now(dt.UTC)))


if __name__ == "__main__":
    from shoplake.spark_submit import run_as_job

    run_as_job(main)
