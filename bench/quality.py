"""The silver quality gate against the silver ETL it gates, same run: does validating cost ≤ 20% of building?

Generates a shop (30 days), lands it, builds silver for every date (the baseline: the ETL time of that table),
then validates the silver version exactly as the pipeline does — the suite through GX's Spark data source, with
the Data Docs page written — and reports validation time ÷ silver time. A published anchor for scale: users report
GX on Spark at ~32,000 rows/s (48M rows in 25 min, GX issue #1788).

Run: ``python -m bench.quality --events 1000000``, then ``--events 10000000`` (the issue's size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Measurement, report
from bench.etl import DAYS, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="shoplake-bench-quality-"))
    os.environ["SHOPLAKE_HOME"] = str(work / "home")
    os.environ.setdefault("SHOPLAKE_SPARK_UI", "false")
    subprocess.run([sys.executable, "-m", "shoplake.cli", "generate", "--events", str(args.events), "--days",
                    str(DAYS), "--out", str(work / "shop")], check=True)  # fmt: skip
    from expectations.stages import validate_silver
    from shoplake.spark import get_spark
    from spark_jobs import bronze, silver

    spark = get_spark("bench-quality")
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    files = sorted(str(p) for p in (work / "shop" / "events").glob("*.csv"))
    bronze.land_event_files(spark, files, run_id="b", ingested_at=at)
    dates = [dt.date(2019, 10, 1) + dt.timedelta(days=n) for n in range(DAYS)]
    silver_seconds, result = timed(lambda: silver.run_silver(spark, dates, run_id="b", processed_at=at))
    share = result.counts["quarantined"] / result.bronze_rows
    rows = result.counts["kept"]
    validate_seconds, audits = timed(
        lambda: validate_silver(spark, result.silver_version, dates, quarantine_share=share, run_id="b", at=at)
    )
    assert all(a.outcome.passed for a in audits)
    measurements = [
        Measurement("silver ETL (baseline)", "baseline", silver_seconds, rows, 0.0),
        Measurement("silver quality gate (GX on Spark + Data Docs)", "shoplake", validate_seconds, rows, 0.0),
    ]
    report("quality_silver", measurements, reference="silver ETL (baseline)",
           context={"events": args.events, "silver_rows": rows, "expectations": len(audits[0].outcome.outcomes),
                    "gate_share_of_etl": round(validate_seconds / silver_seconds, 3)})  # fmt: skip
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
