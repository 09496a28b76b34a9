"""Shared fixtures: one local SparkSession for the whole run, and a fresh lake per test."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoplake.airflow_setup import airflow_environment

# Airflow reads its configuration when first imported: point it at a throwaway home before any test imports it.
for _key, _value in airflow_environment(Path(tempfile.mkdtemp(prefix="shoplake-tests-airflow-"))).items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("SHOPLAKE_SPARK_MASTER", "local[2]")
os.environ.setdefault("SHOPLAKE_SPARK_SHUFFLE_PARTITIONS", "2")
os.environ.setdefault("SHOPLAKE_SPARK_UI", "false")
os.environ.setdefault("SHOPLAKE_SPARK_DRIVER_MEMORY", "2g")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVENTS = REPO / "data" / "rees46" / "2019-Oct-first-3h.csv"


@pytest.fixture(scope="session")
def spark():
    from shoplake.spark import get_spark

    session = get_spark("shoplake-tests")
    yield session
    session.stop()


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point SHOPLAKE_HOME at an empty folder for one test."""
    from shoplake.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("SHOPLAKE_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def require_service(name: str, host: str, port: int) -> str:
    """Skip a test whose server is absent, with the reason; under CI=true an absent server is a failure."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        reason = f"{name} is not reachable at {host}:{port} ({error})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI runs {name}, so this test must not skip")
        pytest.skip(reason)
    return f"{host}:{port}"


@pytest.fixture(scope="session")
def postgres() -> str:
    """host:port of the real PostgreSQL server (trust auth)."""
    return require_service("PostgreSQL", os.environ.get("SHOPLAKE_TEST_PG_HOST", "127.0.0.1"), 5432)


@pytest.fixture(scope="session")
def redis() -> str:
    """host:port of the real Redis server."""
    return require_service("Redis", os.environ.get("SHOPLAKE_TEST_REDIS_HOST", "127.0.0.1"), 6379)
