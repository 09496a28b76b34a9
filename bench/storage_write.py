"""Writing a Spark DataFrame to a Delta table: shoplake's storage layer against two baselines, same run.

- shoplake: Spark's executors write Parquet, the files are moved into the table and committed by delta-rs.
- baseline ``delta-rs via driver``: what one writes without a storage layer: ``df.toArrow()`` then
  ``write_deltalake`` — the whole dataset passes through the driver's Python memory.
- baseline ``spark parquet, no Delta``: the floor: the same files with no transaction log at all.

Run: ``python -m bench.storage_write [--rows N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from deltalake import DeltaTable, write_deltalake
from pyspark.sql import functions as F

from bench.common import measure, report
from shoplake.catalog import INTERACTIONS


def interactions_frame(spark, rows: int, dates: int = 7):
    """Rows shaped like the interactions table, generated inside Spark (no driver memory)."""
    return spark.range(rows).select(
        (F.col("id") % 200_003).alias("user_id"),
        (F.col("id") * 7 % 50_021).alias("item_id"),
        (F.col("id") % 5).alias("views"),
        (F.col("id") % 2).alias("carts"),
        F.lit(0).cast("long").alias("removes"),
        (F.col("id") % 3 == 0).cast("long").alias("purchases"),
        F.timestamp_seconds(1_569_888_000 + F.col("id") % 86_400).alias("first_event_time"),
        F.timestamp_seconds(1_569_888_000 + F.col("id") % 86_400 + 60).alias("last_event_time"),
        (F.col("id") % 1000 / 100.0).alias("score"),
        F.timestamp_seconds(F.lit(1_570_492_800)).alias("event_timestamp"),
        F.timestamp_seconds(F.lit(1_570_492_800)).alias("created_timestamp"),
        F.date_add(F.lit("2019-10-01").cast("date"), (F.col("id") % dates).cast("int")).alias("as_of_date"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="shoplake-bench-")
    os.environ["SHOPLAKE_HOME"] = home
    os.environ.setdefault("SHOPLAKE_SPARK_UI", "false")
    from shoplake import storage
    from shoplake.settings import get_settings
    from shoplake.spark import get_spark

    get_settings.cache_clear()
    spark = get_spark("bench-storage")
    df = interactions_frame(spark, args.rows)
    df.limit(1000).count()  # start executors before timing
    parquet_dir, naive_uri = f"{home}/plain_parquet", f"{home}/naive_delta"
    results = [
        measure("shoplake write_table (commit Spark's files)", "shoplake", args.rows,
                lambda: storage.write_table(df, INTERACTIONS, "overwrite")),
        measure("spark parquet, no Delta (floor)", "baseline", args.rows,
                lambda: df.write.mode("overwrite").partitionBy("as_of_date").parquet(parquet_dir)),
        measure("delta-rs via driver (toArrow + write)", "baseline", args.rows,
                lambda: write_deltalake(naive_uri, df.toArrow(), partition_by=["as_of_date"], mode="overwrite")),
    ]  # fmt: skip
    results.append(
        measure(
            "shoplake read_table + count",
            "shoplake",
            args.rows,
            lambda: storage.read_table(spark, INTERACTIONS).count(),
        )  # fmt: skip
    )
    results.append(
        measure(
            "spark parquet read + count (floor)", "baseline", args.rows, lambda: spark.read.parquet(parquet_dir).count()
        )  # fmt: skip
    )
    assert storage.read_table(spark, INTERACTIONS).count() == args.rows
    assert DeltaTable(naive_uri).to_pyarrow_dataset().count_rows() == args.rows
    report("storage_write", results, reference="shoplake write_table (commit Spark's files)",
           context={"rows": args.rows, "spark_master": get_settings().spark_master})  # fmt: skip
    spark.stop()
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
