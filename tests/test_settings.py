"""Settings resolve from SHOPLAKE_* variables, with local defaults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from shoplake.settings import Settings
from shoplake.spark import spark_conf


def test_local_defaults_derive_every_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("SHOPLAKE_HOME", "SHOPLAKE_LAKE_URI"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)
    assert settings.home == tmp_path / ".shoplake"
    assert settings.lake_root == str(tmp_path / ".shoplake" / "lake")
    assert settings.table_uri("silver_events") == str(tmp_path / ".shoplake" / "lake" / "silver_events")
    assert settings.reports_dir == tmp_path / ".shoplake" / "reports"
    assert settings.event_weights == {"view": 1.0, "cart": 3.0, "purchase": 5.0, "remove_from_cart": -1.0}
    assert settings.half_life_days == 14.0


def test_environment_overrides_and_cloud_uris_pass_through(monkeypatch):
    monkeypatch.setenv("SHOPLAKE_LAKE_URI", "s3://shop-bucket/lake")
    monkeypatch.setenv("SHOPLAKE_SPARK_MASTER", "spark://master:7077")
    monkeypatch.setenv("SHOPLAKE_SPARK_CONF", '{"spark.executor.memory": "8g", "spark.sql.shuffle.partitions": "400"}')
    monkeypatch.setenv("SHOPLAKE_EVENT_WEIGHTS", '{"view": 0.5, "purchase": 10}')
    settings = Settings(_env_file=None)
    assert settings.table_uri("items") == "s3://shop-bucket/lake/items"
    assert settings.staging_root == "s3://shop-bucket/lake/_staging"
    assert settings.spark_master == "spark://master:7077"
    assert settings.event_weights == {"view": 0.5, "purchase": 10.0}
    conf = spark_conf(settings)
    assert conf["spark.executor.memory"] == "8g"
    assert conf["spark.sql.shuffle.partitions"] == "400"  # the user's conf wins over the small-machine default
    assert conf["spark.sql.session.timeZone"] == "UTC"


def test_a_machine_in_another_time_zone_keeps_every_time_in_utc(tmp_path):
    """PySpark turns naive datetimes (literals) into instants, and collected timestamps back into datetimes, in the
    Python process's local zone; shoplake's session makes that zone UTC, as Spark's session zone is."""
    script = textwrap.dedent("""
        import datetime as dt
        from pyspark.sql import functions as F
        from shoplake.spark import get_spark

        row = get_spark().range(1).select(
            F.date_format(F.lit(dt.datetime(2019, 10, 1, 2, 44)), "yyyy-MM-dd HH:mm").alias("literal"),
            F.to_timestamp(F.lit("2019-10-01 02:44:00")).alias("collected"),
        ).first()
        print(row.literal, row.collected.isoformat())
    """)
    env = {**os.environ, "TZ": "America/New_York", "SHOPLAKE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "2019-10-01 02:44 2019-10-01T02:44:00"  # New York would say 06:44, 22:44
