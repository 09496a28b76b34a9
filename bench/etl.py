"""The Spark ETL (bronze → silver → gold) against a DuckDB reference over the same generated input, same run.

The reference computes the same gold aggregations in one DuckDB process: typing and validity rules, exact
duplicates and 2-second repeats within a day removed, the decayed interaction matrix, session/user-basket item
similarity with top-K neighbours, user RFM and activity windows, item demand windows and smoothed rates. It writes
no Delta tables, keeps no provenance or quarantine and does no reconciliation, so it is a floor, not a twin.

Run: ``python -m bench.etl --events 1000000 --events 10000000``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import Measurement, report

DAYS = 30


@dataclass
class PeakMemory:
    """Peak resident memory of this Python process and of its JVM (Spark's driver) while it runs."""

    python_mb: float = 0.0
    jvm_mb: float = 0.0

    def __post_init__(self) -> None:
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._done.wait(0.2):
            self.python_mb = max(self.python_mb, me.memory_info().rss / 2**20)
            jvm = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived helper process ended meanwhile
                    jvm += child.memory_info().rss if "java" in child.name() else 0
            self.jvm_mb = max(self.jvm_mb, jvm / 2**20)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def timed(fn):
    began = time.perf_counter()
    value = fn()
    return time.perf_counter() - began, value


def run_shoplake(event_files: list[str], as_of: dt.date) -> tuple[dict[str, float], dict[str, int]]:
    from shoplake import storage
    from shoplake.catalog import SILVER_EVENTS
    from shoplake.spark import get_spark
    from spark_jobs import bronze, gold, silver

    spark = get_spark("bench-etl")
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    seconds: dict[str, float] = {}
    seconds["bronze"], landed = timed(lambda: bronze.land_event_files(spark, event_files, run_id="b", ingested_at=at))
    dates = [as_of - dt.timedelta(days=n) for n in range(DAYS)]
    seconds["silver"], _ = timed(lambda: silver.run_silver(spark, dates, run_id="b", processed_at=at))
    seconds["gold"], result = timed(lambda: gold.run_gold(spark, as_of, run_id="b", computed_at=at))
    lines = 0
    for name in event_files:
        with open(name) as handle:
            lines += sum(1 for _ in handle) - 1  # less the header
    assert landed.rows_landed == lines
    rows = {"events": storage.read_table(spark, SILVER_EVENTS).count(), "interactions": result.rows["interactions"],
            "similarity": result.rows["item_similarity"], "user_features": result.rows["user_features"],
            "item_features": result.rows["item_features"]}  # fmt: skip
    return seconds, rows


REFERENCE_SQL = """
CREATE OR REPLACE TEMP TABLE raw AS SELECT * FROM read_csv({files}, header = true, all_varchar = true);
CREATE OR REPLACE TEMP TABLE valid AS
SELECT DISTINCT * FROM (
  SELECT try_strptime(event_time, '%Y-%m-%d %H:%M:%S UTC') AS event_time, lower(trim(event_type)) AS event_type,
         try_cast(product_id AS BIGINT) AS product_id, try_cast(category_id AS BIGINT) AS category_id,
         nullif(lower(category_code), '') AS category_code, nullif(lower(brand), '') AS brand,
         CASE WHEN try_cast(price AS DOUBLE) > 0 THEN try_cast(price AS DOUBLE) END AS price,
         try_cast(user_id AS BIGINT) AS user_id, nullif(user_session, '') AS session_id
  FROM raw)
WHERE event_time IS NOT NULL AND user_id IS NOT NULL AND product_id IS NOT NULL
  AND event_type IN ('view', 'cart', 'remove_from_cart', 'purchase')
  AND NOT (event_type IN ('cart', 'purchase') AND price IS NULL);
CREATE OR REPLACE TEMP TABLE events AS
SELECT * EXCLUDE (previous) FROM (
  SELECT *, lag(event_time) OVER (PARTITION BY user_id, product_id, event_type, CAST(event_time AS DATE)
                                  ORDER BY event_time, session_id NULLS FIRST, price NULLS FIRST, category_id NULLS FIRST,
                                           category_code NULLS FIRST, brand NULLS FIRST) AS previous
  FROM valid)
WHERE previous IS NULL OR event_time - previous > INTERVAL 2 SECOND;
CREATE OR REPLACE TEMP TABLE interactions AS
SELECT user_id, product_id AS item_id,
       count(*) FILTER (WHERE event_type = 'view') AS views, count(*) FILTER (WHERE event_type = 'cart') AS carts,
       count(*) FILTER (WHERE event_type = 'purchase') AS purchases, min(event_time) AS first_time,
       max(event_time) AS last_time,
       greatest(sum(CASE event_type WHEN 'view' THEN 1 WHEN 'cart' THEN 3 WHEN 'purchase' THEN 5 ELSE -1 END
                * pow(2, -(epoch(TIMESTAMP '{end}') - epoch(event_time)) / 86400 / 14)), 0) AS score
FROM events GROUP BY ALL;
CREATE OR REPLACE TEMP TABLE baskets AS
SELECT basket_id, item_id FROM (
  SELECT 's:' || session_id AS basket_id, product_id AS item_id,
         row_number() OVER (PARTITION BY session_id ORDER BY max(event_time) DESC, product_id) AS position
  FROM events GROUP BY session_id, product_id
  UNION ALL
  SELECT 'u:' || user_id, product_id,
         row_number() OVER (PARTITION BY user_id ORDER BY max(event_time) DESC, product_id)
  FROM events GROUP BY user_id, product_id)
WHERE position <= 20;
CREATE OR REPLACE TEMP TABLE similarity AS
WITH holding AS (SELECT item_id, count(*) AS n FROM baskets GROUP BY item_id),
pairs AS (SELECT a.item_id, b.item_id AS neighbor_item_id, count(*) AS support
          FROM baskets a JOIN baskets b USING (basket_id) WHERE a.item_id <> b.item_id GROUP BY ALL),
weighted AS (SELECT p.*, support / sqrt(hi.n * hj.n) AS weight FROM pairs p
             JOIN holding hi ON hi.item_id = p.item_id JOIN holding hj ON hj.item_id = p.neighbor_item_id)
SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY weight DESC, support DESC,
                                                neighbor_item_id) AS rank FROM weighted) WHERE rank <= 50;
CREATE OR REPLACE TEMP TABLE user_features AS
SELECT user_id,
       max(event_time) FILTER (WHERE event_type = 'purchase') AS last_purchase,
       count(*) FILTER (WHERE event_type = 'purchase') AS frequency,
       coalesce(sum(price) FILTER (WHERE event_type = 'purchase'), 0) AS monetary,
       count(*) FILTER (WHERE event_type = 'view' AND event_time >= TIMESTAMP '{end}' - INTERVAL 1 DAY) AS views_1d,
       count(*) FILTER (WHERE event_type = 'view' AND event_time >= TIMESTAMP '{end}' - INTERVAL 7 DAY) AS views_7d,
       count(*) FILTER (WHERE event_type = 'view') AS views_30d,
       count(DISTINCT session_id) AS sessions_30d, mode(brand) AS preferred_brand
FROM events GROUP BY user_id;
CREATE OR REPLACE TEMP TABLE item_features AS
WITH counts AS (
  SELECT product_id AS item_id, count(*) FILTER (WHERE event_type = 'view') AS views_30d,
         count(*) FILTER (WHERE event_type = 'cart') AS carts_30d,
         count(*) FILTER (WHERE event_type = 'purchase') AS purchases_30d,
         count(DISTINCT user_id) AS distinct_users_30d, avg(price) AS price_mean, arg_max(category_code, event_time) AS category_code
  FROM events GROUP BY product_id),
prior AS (SELECT sum(carts_30d) / sum(views_30d) AS p FROM counts)
SELECT counts.*, least((carts_30d + 20 * p) / (views_30d + 20), 1) AS view_to_cart_rate,
       row_number() OVER (ORDER BY views_30d + carts_30d + purchases_30d DESC, item_id) AS popularity_rank
FROM counts, prior;
"""


def run_duckdb(event_files: list[str], as_of: dt.date) -> dict[str, int]:
    import duckdb

    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    connection = duckdb.connect()
    connection.execute(f"SET threads = {os.cpu_count()}")
    connection.execute(REFERENCE_SQL.format(files=[str(f) for f in event_files], end=end.isoformat(sep=" ")))
    return {t: connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("events", "interactions", "similarity", "user_features", "item_features")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append", help="Event counts to run; repeatable.")
    parser.add_argument("--items", type=int, default=50_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sizes = args.events or [1_000_000]
    os.environ.setdefault("SHOPLAKE_SPARK_UI", "false")
    from shoplake.settings import get_settings

    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="shoplake-bench-etl-"))
        os.environ["SHOPLAKE_HOME"] = str(work / "home")
        get_settings.cache_clear()
        # generated in a child process, so this process's memory is the pipeline's alone
        subprocess.run([sys.executable, "-m", "shoplake.cli", "generate", "--events", str(size), "--days", str(DAYS),
                        "--items", str(args.items), "--out", str(work / "shop")], check=True)  # fmt: skip
        files = sorted(str(p) for p in (work / "shop" / "events").glob("*.csv"))
        as_of = dt.date(2019, 10, 1) + dt.timedelta(days=DAYS - 1)
        with PeakMemory() as spark_memory:
            stages, shoplake_rows = run_shoplake(files, as_of)
        with PeakMemory() as duck_memory:
            duck_seconds, duck_rows = timed(lambda: run_duckdb(files, as_of))  # noqa: B023
        if shoplake_rows != duck_rows:  # the two implementations must agree before their speed means anything
            raise SystemExit(f"row counts differ: shoplake {shoplake_rows} vs duckdb {duck_rows}")
        total = sum(stages.values())
        measurements = [
            Measurement(f"shoplake {stage}", "shoplake", seconds, size, spark_memory.python_mb)
            for stage, seconds in stages.items()
        ]
        measurements.append(Measurement("shoplake bronze→gold total", "shoplake", total, size, spark_memory.python_mb))
        measurements.append(
            Measurement("duckdb reference (same aggregations)", "baseline", duck_seconds, size, duck_memory.python_mb)
        )
        report(f"etl_{size}", measurements, reference="duckdb reference (same aggregations)",
               context={"events": size, "days": DAYS, "items": args.items, "jvm_peak_mb": round(spark_memory.jvm_mb),
                        "python_peak_mb": round(spark_memory.python_mb), "rows_agree": duck_rows,
                        "end_to_end_events_per_s": round(size / total)})  # fmt: skip
        from shoplake.spark import get_spark

        get_spark().stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
