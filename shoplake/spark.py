"""The single SparkSession factory.

Local mode is tuned for a small machine (adaptive execution, few shuffle partitions). ``SHOPLAKE_SPARK_MASTER``
points the same jobs at a standalone or Kubernetes cluster, or at a Spark Connect server (``sc://``).
Parquet is written with microsecond UTC timestamps because that is what the Delta protocol (and delta-rs) expects.
Every time is UTC: the session's, the JVM's and this Python process's local zone (``run_in_utc``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from shoplake.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

BASE_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.adaptive.coalescePartitions.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "snappy",
    # A cache here lives for one run and is read once or twice; compressing it cost silver's classification pass
    # a fifth of its time at ten million events (79 -> 62 executor seconds without), and gold's time not at all.
    "spark.sql.inMemoryColumnarStorage.compressed": "false",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.hadoop.parquet.summary.metadata.level": "NONE",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    # The throughput collector: batch jobs want no concurrent marking threads competing for two cores (~10 % of gold).
    # JIT-compile huge methods too: the JVM leaves methods over 8 kB of bytecode interpreted, and whole-stage codegen
    # of a wide projection (silver's typing and rule checks) produces one; interpreted, it ran 4x slower.
    "spark.driver.extraJavaOptions": (
        "-Dderby.system.home=/tmp/derby -Duser.timezone=UTC -XX:+UseParallelGC -XX:-DontCompileHugeMethods"
    ),
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC -XX:+UseParallelGC -XX:-DontCompileHugeMethods",
    "spark.executorEnv.TZ": "UTC",  # executors' Python workers (the embedding job) convert times as the driver does
}


def spark_conf(settings: Settings) -> dict[str, str]:
    """The effective Spark configuration: project defaults, then the user's ``SHOPLAKE_SPARK_CONF`` on top."""
    conf = dict(BASE_CONF)
    conf["spark.sql.shuffle.partitions"] = str(settings.spark_shuffle_partitions)
    conf["spark.driver.memory"] = settings.spark_driver_memory
    conf["spark.ui.enabled"] = str(settings.spark_ui).lower()
    if settings.spark_master.startswith("local"):
        # Tables are read as lists of Delta data files; past 32 paths Spark would list them with a Spark job (seconds
        # on a local master, useful only against an object store), so a local session stats them on the driver.
        conf["spark.sql.sources.parallelPartitionDiscovery.threshold"] = "100000"
        # Half the default split size: silver read bronze's ten million events in 4 splits, and on two cores the
        # last ones ran alone (6 splits: its first pass 16.4 -> 14.7 s).
        conf["spark.sql.files.maxPartitionBytes"] = "64m"
    conf.update(settings.spark_conf)
    return conf


def run_in_utc() -> None:
    """Make UTC this process's local time zone, as it is Spark's session time zone and every time in shoplake.

    PySpark turns a naive ``datetime`` into an instant, and a collected timestamp back into a naive ``datetime``,
    in the Python process's local zone, not the session's. On a machine set to New York, the evaluation's split
    time (collected, then used as a literal) moved four hours and the split found no users."""
    if os.environ.get("TZ") != "UTC" and hasattr(time, "tzset"):  # tzset: Unix
        os.environ["TZ"] = "UTC"
        time.tzset()


def get_spark(app_name: str = "shoplake", settings: Settings | None = None) -> SparkSession:
    """Return the active session, or build one from settings. Never called at import time."""
    from pyspark.sql import SparkSession

    settings = settings or get_settings()
    run_in_utc()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if settings.spark_master.startswith("local"):
        # Python workers (mapInArrow: embeddings on executors) must run this interpreter, not the system's python3.
        # PySpark reads only the environment for it; on a cluster, spark.pyspark.python names the executors' one.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if settings.spark_master.startswith("sc://"):
        builder = builder.remote(settings.spark_master)
    else:
        builder = builder.master(settings.spark_master)
        for key, value in spark_conf(settings).items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if not settings.spark_master.startswith("sc://"):  # Spark Connect clients have no SparkContext
        spark.sparkContext.setLogLevel("WARN")
    log.info("Spark session %s on %s", app_name, settings.spark_master)
    return spark
