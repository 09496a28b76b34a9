"""The storage layer's rules, each checked against hand-written rows."""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import subprocess
import sys

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from shoplake import storage
from shoplake.catalog import INTERACTIONS, RUN_METRICS
from shoplake.errors import SchemaMismatchError, TableNotFoundError, UnknownTableError, WriteConflictError

D1, D2, D3 = dt.date(2019, 10, 1), dt.date(2019, 10, 2), dt.date(2019, 10, 3)
T0 = dt.datetime(2019, 10, 1, 12, 0, tzinfo=dt.UTC)


def interactions(spark, rows):
    """rows: (as_of_date, user_id, item_id, views, score)."""
    data = [(u, i, v, 0, 0, 0, T0, T0, s, T0, T0, d) for d, u, i, v, s in rows]
    return spark.createDataFrame(data, INTERACTIONS.schema)


def read(spark, table="interactions", version=None):
    return storage.read_table(spark, table, version)


def test_round_trip_keeps_every_value_and_the_partition_column(spark, lake):
    df = interactions(spark, [(D1, 1, 10, 2, 1.5), (D2, 1, 11, 1, 0.5), (D2, 2, 10, 7, 3.25)])
    result = storage.write_table(df, "interactions", "overwrite")
    assert (result.version, result.rows, result.files) == (0, 3, 2)
    assertDataFrameEqual(read(spark), df)
    assert sorted(os.listdir(lake / "lake" / "interactions")) == [
        "_delta_log",
        "as_of_date=2019-10-01",
        "as_of_date=2019-10-02",
    ]


def test_delta_rs_reads_the_files_with_their_statistics(spark, lake):
    storage.write_table(
        interactions(spark, [(D1, 1, 10, 2, 1.5), (D1, 5, 11, 1, 0.5), (D2, 9, 12, 1, 0.1)]), "interactions"
    )
    table = DeltaTable(storage.table_uri("interactions"))
    assert table.to_pyarrow_table(filters=[("user_id", "=", 5)])["item_id"].to_pylist() == [11]
    assert table.to_pyarrow_table(filters=[("as_of_date", "=", D2)])["user_id"].to_pylist() == [9]
    assert table.to_pyarrow_table().num_rows == 3


def test_long_strings_get_truncated_bounds_that_filters_can_trust(spark, lake):
    """A string longer than the statistics keep (a checksum, a session uuid, an Airflow run id) has a prefix as its
    minimum and the prefix and the last code point as its maximum, as Delta's Spark writer does. Without bounds,
    deltalake's Arrow dataset ruled out every file of any filter on that column (its guarantee compared to null)."""
    long_ids = ["airflow-manual__2026-12-05T05-05-32.331970-00-00", "airflow-manual__2026-12-05T05-05-32.331970-00-01"]
    rows = [(run, "bronze", "rows", 1.0, None, D1, dt.datetime(2026, 1, 1)) for run in [*long_ids, "short"]]
    storage.write_table(spark.createDataFrame(rows, RUN_METRICS.schema), RUN_METRICS)
    table = DeltaTable(storage.table_uri("run_metrics"))
    for run in [*long_ids, "short"]:
        assert table.to_pyarrow_table(filters=[("run_id", "=", run)])["run_id"].to_pylist() == [run]
    log = (lake / "lake" / "run_metrics" / "_delta_log" / "00000000000000000000.json").read_text().splitlines()
    stats = [json.loads(json.loads(line)["add"]["stats"]) for line in log if '"add"' in line]
    prefix = long_ids[0][: storage.MAX_STAT_STRING]  # the two long ids share it
    bounds = {(s["minValues"]["run_id"], s["maxValues"]["run_id"]) for s in stats}
    assert bounds and bounds <= {(prefix, prefix + "\U0010ffff"), ("short", "short"), (prefix, "short")}


def test_append_adds_rows_in_a_new_version(spark, lake):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0)]), "interactions", "append")
    result = storage.write_table(interactions(spark, [(D1, 2, 10, 1, 1.0)]), "interactions", "append")
    assert (result.version, result.rows) == (1, 1)
    assert sorted(r.user_id for r in read(spark).collect()) == [1, 2]


def test_overwrite_replaces_the_whole_table(spark, lake):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0), (D2, 2, 10, 1, 1.0)]), "interactions")
    storage.write_table(interactions(spark, [(D3, 3, 30, 1, 1.0)]), "interactions", "overwrite")
    assert [(r.as_of_date, r.user_id) for r in read(spark).collect()] == [(D3, 3)]


def test_overwrite_partitions_replaces_only_the_partitions_written(spark, lake):
    storage.write_table(
        interactions(spark, [(D1, 1, 10, 1, 1.0), (D2, 2, 20, 1, 1.0), (D2, 3, 30, 1, 1.0)]), "interactions"
    )
    storage.write_table(interactions(spark, [(D2, 4, 40, 1, 1.0)]), "interactions", "overwrite_partitions")
    assert sorted((r.as_of_date, r.user_id) for r in read(spark).collect()) == [(D1, 1), (D2, 4)]


def test_a_clustered_write_keeps_the_tasks_as_they_are_and_a_plain_one_rebalances(spark, lake):
    df = interactions(spark, [(D1, u, 10, 1, 1.0) for u in range(8)]).repartition(4)  # one date in all 4 tasks
    assert storage.write_table(df, "interactions", "overwrite", clustered=True).files == 4
    assert storage.write_table(df, "interactions", "overwrite").files == 1  # rebalanced by date first
    assert sorted(r.user_id for r in read(spark).collect()) == list(range(8))


def test_overwrite_of_a_named_partition_with_no_rows_empties_it(spark, lake):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0), (D2, 2, 20, 1, 1.0)]), "interactions")
    empty = interactions(spark, [])
    storage.write_table(empty, "interactions", "overwrite_partitions", partitions=[{"as_of_date": D2}])
    assert [(r.as_of_date, r.user_id) for r in read(spark).collect()] == [(D1, 1)]


def test_overwrite_partitions_refuses_rows_outside_the_named_partitions(spark, lake):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0)]), "interactions")
    with pytest.raises(ValueError, match="outside the partitions"):
        storage.write_table(interactions(spark, [(D2, 2, 20, 1, 1.0)]), "interactions", "overwrite_partitions",
                            partitions=[{"as_of_date": D1}])  # fmt: skip
    assert storage.table_version("interactions") == 0
    assert _data_files(lake, "interactions") == 1


def test_merge_updates_matches_inserts_the_rest_and_is_idempotent(spark, lake):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0), (D1, 2, 20, 1, 2.0)]), "interactions")
    upsert = interactions(spark, [(D1, 2, 20, 5, 9.0), (D1, 3, 30, 1, 4.0)])
    storage.merge_table(upsert, "interactions")
    expected = interactions(spark, [(D1, 1, 10, 1, 1.0), (D1, 2, 20, 5, 9.0), (D1, 3, 30, 1, 4.0)])
    assertDataFrameEqual(read(spark), expected)
    storage.merge_table(upsert, "interactions")
    assertDataFrameEqual(read(spark), expected)
    assert storage.table_version("interactions") == 2


def test_merge_into_a_new_table_creates_it(spark, lake):
    rows = interactions(spark, [(D1, 1, 10, 1, 1.0)])
    assert storage.merge_table(rows, "interactions").version == 0
    assertDataFrameEqual(read(spark), rows)


def test_a_lake_in_a_folder_whose_name_needs_escaping_reads_writes_and_merges(spark, tmp_path, monkeypatch):
    """delta-rs escapes file paths in URIs (a space is %20); Spark must be given the paths as they are on disk."""
    from shoplake.settings import get_settings

    monkeypatch.setenv("SHOPLAKE_HOME", str(tmp_path / "my shop 100% ü"))
    get_settings.cache_clear()
    try:
        storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0), (D2, 2, 20, 1, 1.0)]), "interactions")
        storage.write_table(interactions(spark, [(D2, 3, 30, 1, 1.0)]), "interactions", "overwrite_partitions")
        storage.merge_table(interactions(spark, [(D1, 1, 10, 5, 2.0)]), "interactions")
        got = sorted((r.as_of_date, r.user_id, r.views) for r in read(spark).collect())
        assert got == [(D1, 1, 5), (D2, 3, 1)]
        assert read(spark, version=0).count() == 2
    finally:
        get_settings.cache_clear()


def test_time_travel_reads_an_earlier_version(spark, lake):
    first = interactions(spark, [(D1, 1, 10, 1, 1.0)])
    storage.write_table(first, "interactions")
    storage.write_table(interactions(spark, [(D1, 2, 20, 1, 1.0)]), "interactions", "overwrite")
    assertDataFrameEqual(read(spark, version=0), first)
    assert [r.user_id for r in read(spark).collect()] == [2]


def test_a_write_that_fails_midway_leaves_the_previous_version_intact(spark, lake):
    before = interactions(spark, [(D1, 1, 10, 1, 1.0), (D2, 2, 20, 1, 1.0)])
    storage.write_table(before, "interactions")

    @F.udf(T.LongType())
    def explode_on_user_3(user_id):
        if user_id == 3:
            raise RuntimeError("disk full (simulated)")
        return user_id

    failing = interactions(spark, [(D1, 1, 11, 1, 1.0), (D2, 3, 30, 1, 1.0)]).withColumn(
        "user_id", explode_on_user_3("user_id")
    )
    with pytest.raises(Exception, match="disk full"):
        storage.write_table(failing, "interactions", "overwrite")
    assert storage.table_version("interactions") == 0
    assertDataFrameEqual(read(spark), before)
    assert _data_files(lake, "interactions") == 2
    assert not glob.glob(str(lake / "lake" / "_staging" / "interactions" / "*"))


def test_racing_overwrites_give_a_clear_conflict_and_an_intact_table(spark, lake, monkeypatch):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0)]), "interactions")
    winner = interactions(spark, [(D1, 2, 20, 1, 1.0)])
    real_move = storage._move_into_table
    raced = []

    def move_after_a_competitor_commits(*args, **kwargs):
        if not raced:  # the competitor commits while the first writer is between staging and commit
            raced.append(True)
            storage.write_table(winner, "interactions", "overwrite")
        return real_move(*args, **kwargs)

    monkeypatch.setattr(storage, "_move_into_table", move_after_a_competitor_commits)
    with pytest.raises(WriteConflictError, match="table interactions: another writer committed first"):
        storage.write_table(interactions(spark, [(D1, 3, 30, 1, 1.0)]), "interactions", "overwrite")
    assert storage.table_version("interactions") == 1
    assertDataFrameEqual(read(spark), winner)
    assert _data_files(lake, "interactions") == 2  # the loser's moved file was removed again


def test_racing_appends_both_land(spark, lake, monkeypatch):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0)]), "interactions")
    real_move = storage._move_into_table
    raced = []

    def move_after_a_competitor_commits(*args, **kwargs):
        if not raced:
            raced.append(True)
            storage.write_table(interactions(spark, [(D1, 2, 20, 1, 1.0)]), "interactions", "append", run_id="b")
        return real_move(*args, **kwargs)

    monkeypatch.setattr(storage, "_move_into_table", move_after_a_competitor_commits)
    storage.write_table(interactions(spark, [(D1, 3, 30, 1, 1.0)]), "interactions", "append", run_id="a")
    storage.write_table(interactions(spark, [(D1, 4, 40, 1, 1.0)]), "interactions", "append", run_id="b")
    assert sorted(r.user_id for r in read(spark).collect()) == [1, 2, 3, 4]
    # the log says who committed first after a version, by each run's first commit since then
    assert storage.runs_committed_since("interactions", 0) == {"b": 1, "a": 2}
    assert storage.runs_committed_since("interactions", 2) == {"b": 3}
    assert storage.runs_committed_since("interactions", None) == {"b": 1, "a": 2}  # version 0 had no run id


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop("score"), "table interactions: column 'score' is missing"),
        (
            lambda df: df.withColumn("views", F.col("views").cast("string")),
            "column 'views' has type string, expected bigint",
        ),
        (
            lambda df: df.withColumn("colour", F.lit("red")),
            "table interactions: column 'colour' is not in the table's schema",
        ),
    ],
)
def test_a_schema_mismatch_names_the_table_and_column(spark, lake, change, message):
    with pytest.raises(SchemaMismatchError, match=message):
        storage.write_table(change(interactions(spark, [(D1, 1, 10, 1, 1.0)])), "interactions")
    assert storage.table_version("interactions") is None


def test_unknown_and_unwritten_tables_are_clear_errors(spark, lake):
    with pytest.raises(UnknownTableError, match="unknown table 'nope'; known tables: .*bronze_events"):
        storage.read_table(spark, "nope")
    with pytest.raises(TableNotFoundError, match="table interactions has not been written yet"):
        storage.read_table(spark, "interactions")


def test_an_empty_write_creates_an_empty_readable_table(spark, lake):
    storage.write_table(spark.createDataFrame([], RUN_METRICS.schema), "run_metrics")
    assert read(spark, "run_metrics").count() == 0
    assert storage.table_info("run_metrics").rows == 0


def test_table_info_counts_rows_and_files(spark, lake):
    storage.write_table(interactions(spark, [(D1, 1, 10, 1, 1.0), (D2, 2, 20, 1, 1.0)]), "interactions")
    info = storage.table_info("interactions")
    assert (info.version, info.rows, info.files) == (0, 2, 2)
    assert info.size_bytes > 0


def test_vacuum_and_optimize_keep_the_latest_version_readable(spark, lake):
    for user in (1, 2, 3):
        storage.write_table(interactions(spark, [(D1, user, 10, 1, 1.0)]), "interactions", "append")
    metrics = storage.optimize_table("interactions")
    assert metrics["numFilesRemoved"] == 3 and metrics["numFilesAdded"] == 1
    removed = storage.vacuum_table("interactions", retention_hours=0)
    assert len(removed) == 3
    assert sorted(r.user_id for r in read(spark).collect()) == [1, 2, 3]


def _data_files(lake, table):
    return len(glob.glob(str(lake / "lake" / table / "**" / "*.parquet"), recursive=True))


def _delta_connector_jars() -> list[str]:
    import pyspark

    jar_dirs = [os.path.join(os.path.dirname(pyspark.__file__), "jars"), os.path.expanduser("~/.ivy2/jars"),
                os.path.expanduser("~/.ivy2.5.2/jars")]  # fmt: skip
    return [j for d in jar_dirs for j in glob.glob(os.path.join(d, "*delta-spark*.jar"))]


@pytest.mark.skipif(
    not _delta_connector_jars(),
    reason="Delta's Spark connector jars are not on this machine (they come only from Maven Central, unreachable "
    "here); the connector branch of the storage layer runs on clusters that have them",
)
def test_the_same_calls_use_delta_spark_when_its_connector_is_loaded(tmp_path):
    jars = ",".join(_delta_connector_jars())
    script = f"""
import datetime as dt
from pyspark.sql import SparkSession
from shoplake import storage
from shoplake.catalog import RUN_METRICS
spark = (SparkSession.builder.master("local[1]").config("spark.jars", "{jars}")
    .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
    .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog").getOrCreate())
row = [("r1", "s", "m", 1.0, None, dt.date(2019, 10, 1), dt.datetime(2019, 10, 1))]
storage.write_table(spark.createDataFrame(row, RUN_METRICS.schema), "run_metrics")
storage.merge_table(spark.createDataFrame(row, RUN_METRICS.schema), "run_metrics")
assert storage.read_table(spark, "run_metrics").count() == 1
"""
    env = {**os.environ, "SHOPLAKE_HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600)
