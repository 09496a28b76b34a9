"""The raw-events suite on real bronze rows: the sample passes; a missing column fails; unknown types only warn."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from expectations import bronze_events
from expectations.runner import run_suite
from shoplake import storage
from spark_jobs import bronze
from tests.conftest import SAMPLE_EVENTS


@pytest.fixture
def bronze_sample(spark, lake):
    bronze.land_event_files(spark, [str(SAMPLE_EVENTS)], run_id="r", ingested_at=dt.datetime(2026, 1, 1))
    return storage.read_table(spark, "bronze_events")


def test_the_sample_passes(bronze_sample):
    outcome = run_suite(bronze_sample, bronze_events.suite)
    assert outcome.passed, [o.describe() for o in outcome.failures("critical")]
    assert outcome.failures("warning") == []


def test_a_missing_column_is_a_critical_failure(bronze_sample):
    outcome = run_suite(bronze_sample.drop("user_session"), bronze_events.suite)
    assert not outcome.passed
    failed = {(o.expectation, o.column) for o in outcome.failures("critical")}
    assert ("expect_column_to_exist", "user_session") in failed


def test_many_unknown_event_types_warn_but_pass(bronze_sample):
    renamed = bronze_sample.withColumn(
        "event_type", F.when(F.col("line_number") % 10 == 0, F.lit("click")).otherwise(F.col("event_type"))
    )
    outcome = run_suite(renamed, bronze_events.suite)
    assert outcome.passed
    (warning,) = outcome.failures("warning")
    assert warning.column == "event_type" and "click" in warning.observed["partial_unexpected_list"]
