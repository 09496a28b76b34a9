"""Shared fixtures: one local SparkSession for the whole run, and a fresh lake per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
