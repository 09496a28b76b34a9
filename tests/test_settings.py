"""Settings resolve from SHOPLAKE_* variables, with local defaults."""

from __future__ import annotations

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
