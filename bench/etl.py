"""The Spark ETL (bronze → silver → gold) against a DuckDB reference over the same generated input, same run.

The reference (``bench/etl_reference.py``) builds every gold table the pipeline builds, with the same rules and
settings, in one DuckDB process, and writes them to Parquet; it keeps no bronze or silver table, provenance,
quarantine or Delta log. Before any time is reported, both sides must agree on every table's rows and on a sum of
its values (interaction scores, similarity weights, CF scores, spend...).

Run: ``python -m bench.etl --events 1000000 --events 10000000``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import math
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
from pyspark.sql import functions as F

from bench.common import Measurement, report
from bench.etl_reference import CHECKED_SUMS, run_reference

DAYS = 30
INGESTED_AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
REFERENCE = "duckdb reference (every gold table)"


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


@dataclass
class PipelineRun:
    seconds: dict[str, float]  # per stage
    gold_seconds: dict[str, float]  # per gold table, as run_gold measured them
    checks: dict[str, tuple[int, float]]


def run_shoplake(event_files: list[str], as_of: dt.date) -> PipelineRun:
    from shoplake.spark import get_spark
    from spark_jobs import bronze, gold, silver

    spark = get_spark("bench-etl")
    seconds: dict[str, float] = {}
    seconds["bronze"], landed = timed(
        lambda: bronze.land_event_files(spark, event_files, run_id="b", ingested_at=INGESTED_AT)
    )
    dates = [as_of - dt.timedelta(days=n) for n in range(DAYS)]
    seconds["silver"], _ = timed(lambda: silver.run_silver(spark, dates, run_id="b", processed_at=INGESTED_AT))
    seconds["gold"], result = timed(lambda: gold.run_gold(spark, as_of, run_id="b", computed_at=INGESTED_AT))
    lines = 0
    for name in event_files:
        with open(name) as handle:
            lines += sum(1 for _ in handle) - 1  # less the header
    assert landed.rows_landed == lines
    return PipelineRun(seconds, result.seconds, pipeline_checks(spark, as_of, result.matrix_dir))  # checks not timed


def pipeline_checks(spark, as_of: dt.date, matrix_dir: Path) -> dict[str, tuple[int, float]]:
    """``etl_reference.CHECKED_SUMS`` on the pipeline's tables as of ``as_of``: rows and a sum of values per table."""
    from shoplake import storage
    from shoplake.catalog import SILVER_EVENTS, TABLES

    sources = {"silver_events": storage.read_table(spark, SILVER_EVENTS),
               "matrix_nonzeros": spark.read.parquet(str(matrix_dir / "coo"))}  # fmt: skip
    checks = {}
    for table, total in CHECKED_SUMS.items():
        frame = sources[table] if table in sources else storage.read_table(spark, TABLES[table])
        if "as_of_date" in frame.columns:
            frame = frame.filter(F.col("as_of_date") == as_of)
        checks[table] = _count_and_sum(frame, total)
    return checks


def _count_and_sum(frame, total: str | None) -> tuple[int, float]:
    row = frame.agg(F.count(F.lit(1)), F.sum(F.expr(total)) if total else F.lit(0.0)).first()
    return int(row[0]), float(row[1] or 0)


def disagreements(ours: dict[str, tuple[int, float]], theirs: dict[str, tuple[int, float]]) -> list[str]:
    """Tables whose rows differ, or whose check sums differ by more than rounding (sums run in other orders)."""
    return [
        f"{table}: shoplake {ours.get(table)} vs duckdb {theirs[table]}"
        for table in theirs
        if table not in ours
        or ours[table][0] != theirs[table][0]
        or not math.isclose(ours[table][1], theirs[table][1], rel_tol=1e-9, abs_tol=1e-6)
    ]


# each part of the work: the pipeline's stages or gold tables, and the reference's steps that do the same
PARTS = {
    "silver events (bronze, silver)": (("bronze", "silver"), ("read CSV", "typing and rules", "duplicates and repeats",
                                                            "sessions and bots")),
    "items": (("items",), ("items",)),
    "interactions": (("interactions",), ("interactions",)),
    "interaction matrix export": (("interaction_matrix",), ("matrix export",)),
    "item similarity (baskets, pairs)": (("item_similarity",), ("baskets", "item similarity")),
    "item neighbours": (("item_neighbors",), ("item neighbors",)),
    "user items": (("user_items",), ("user items",)),
    "cf recommendations": (("cf_recommendations",), ("cf recommendations",)),
    "user features": (("user_features",), ("user features",)),
    "item features": (("item_features",), ("item features",)),
    "category popular": (("category_popular",), ("category popular",)),
    "writing the gold tables": ((), ("write gold tables",)),
}  # fmt: skip


def print_parts(pipeline: PipelineRun, reference_seconds: dict[str, float]) -> None:
    """Seconds per part of the work on both sides. The pipeline writes each gold table as it computes it, so its
    writes are inside each table's time; the reference writes them all at the end."""
    ours = pipeline.seconds | pipeline.gold_seconds
    print(f"\n{'part':<34} {'shoplake s':>10} {'duckdb s':>9} {'ratio':>6}")
    for part, (stages, steps) in PARTS.items():
        mine, theirs = sum(ours.get(s, 0.0) for s in stages), sum(reference_seconds[s] for s in steps)
        ratio = f"{mine / theirs:6.1f}" if stages and theirs else "     -"
        print(f"{part:<34} {mine:>10.2f} {theirs:>9.2f} {ratio}")
    print(
        f"{'gold outside the tables (metrics)':<34} {pipeline.seconds['gold'] - sum(pipeline.gold_seconds.values()):>10.2f}"
    )
    print(
        f"without cf recommendations on either side: shoplake ÷ DuckDB = {ratio_without_cf(pipeline, reference_seconds):.2f}"
    )


def ratio_without_cf(pipeline: PipelineRun, reference_seconds: dict[str, float]) -> float:
    """The whole ratio less the one part where the two sides use different algorithms for the same sums (SQL's
    join and group-by against sparse matrix products)."""
    ours = sum(pipeline.seconds.values()) - pipeline.gold_seconds["cf_recommendations"]
    return ours / (sum(reference_seconds.values()) - reference_seconds["cf recommendations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, action="append", help="Event counts to run; repeatable.")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--shops", type=Path, help="Keep generated shops here (one folder per size) and reuse them.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sizes = args.events or [1_000_000]
    os.environ.setdefault("SHOPLAKE_SPARK_UI", "false")
    from shoplake.settings import get_settings

    for size in sizes:
        work = Path(tempfile.mkdtemp(prefix="shoplake-bench-etl-"))
        os.environ["SHOPLAKE_HOME"] = str(work / "home")
        get_settings.cache_clear()
        shop = args.shops / f"{size}-{args.items}" if args.shops else work / "shop"
        if not (shop / "events").is_dir():  # generated in a child process: this process's memory is the pipeline's
            subprocess.run([sys.executable, "-m", "shoplake.cli", "generate", "--events", str(size), "--days",
                            str(DAYS), "--items", str(args.items), "--out", str(shop)], check=True)  # fmt: skip
        files = sorted(str(p) for p in (shop / "events").glob("*.csv"))
        as_of = dt.date(2019, 10, 1) + dt.timedelta(days=DAYS - 1)
        with PeakMemory() as spark_memory:
            pipeline = run_shoplake(files, as_of)
        with PeakMemory() as duck_memory:
            reference = run_reference(files, as_of, INGESTED_AT, get_settings(), work / "duckdb")
        differences = disagreements(pipeline.checks, reference.checks)
        if differences:  # the two implementations must agree before their speed means anything
            raise SystemExit("shoplake and the DuckDB reference disagree:\n  " + "\n  ".join(differences))
        total, duck_seconds = sum(pipeline.seconds.values()), sum(reference.seconds.values())
        measurements = [
            Measurement(f"shoplake {stage}", "shoplake", seconds, size, spark_memory.python_mb)
            for stage, seconds in pipeline.seconds.items()
        ]
        measurements.append(Measurement("shoplake bronze→gold total", "shoplake", total, size, spark_memory.python_mb))
        measurements.append(Measurement(REFERENCE, "baseline", duck_seconds, size, duck_memory.python_mb))
        print_parts(pipeline, reference.seconds)
        report(f"etl_{size}", measurements, reference=REFERENCE,
               context={"events": size, "days": DAYS, "items": args.items, "jvm_peak_mb": round(spark_memory.jvm_mb),
                        "python_peak_mb": round(spark_memory.python_mb), "end_to_end_events_per_s": round(size / total),
                        "ratio_without_cf": round(ratio_without_cf(pipeline, reference.seconds), 2),
                        "tables_agree": {t: rows for t, (rows, _) in reference.checks.items()},
                        "gold_table_seconds": {t: round(v, 2) for t, v in pipeline.gold_seconds.items()},
                        "duckdb_step_seconds": {s: round(v, 2) for s, v in reference.seconds.items()}})  # fmt: skip
        from shoplake.spark import get_spark

        get_spark().stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
