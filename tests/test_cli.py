"""The CLI end to end on small inputs: generate, ingest, tables, pipeline, and clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from shoplake.catalog import TABLES
from shoplake.cli import app
from tests.conftest import SAMPLE_EVENTS

runner = CliRunner()


@pytest.fixture(scope="module")
def sample_pipeline(spark, tmp_path_factory):
    """One ``shoplake pipeline`` run on the sample (about 100 s), shared: one test reads what it printed, the next
    reruns stages on the lake it left. Yields the lake's home and the run's result."""
    from shoplake.settings import get_settings

    home = tmp_path_factory.mktemp("pipeline") / "home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SHOPLAKE_HOME", str(home))
        get_settings.cache_clear()
        yield home, runner.invoke(app, ["pipeline", "--events", str(SAMPLE_EVENTS)])
    get_settings.cache_clear()


@pytest.fixture
def pipeline_lake(sample_pipeline, monkeypatch):
    """The shared pipeline's lake as this test's SHOPLAKE_HOME."""
    from shoplake.settings import get_settings

    home, result = sample_pipeline
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("SHOPLAKE_HOME", str(home))
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def test_generate_ingest_a_folder_list_tables_then_gold_for_each_date_of_a_range(spark, lake, tmp_path):
    from pyspark.sql import functions as F

    from expectations.gate import published_version
    from shoplake import storage

    out = tmp_path / "shop"
    result = runner.invoke(app, ["generate", "--events", "3000", "--days", "3", "--items", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "3,000 events" in result.output
    result = runner.invoke(app, ["ingest", "--events", str(out / "events")])
    assert result.exit_code == 0, result.output
    assert "bronze_events: 3,000 rows from 3 new files" in result.output
    result = runner.invoke(app, ["ingest", "--items", str(out / "items.jsonl")])  # a catalogue on its own
    assert result.exit_code == 0, result.output
    assert "items: 100 catalogue rows merged" in result.output
    result = runner.invoke(app, ["tables"])
    assert result.exit_code == 0, result.output
    bronze_line = next(line for line in result.output.splitlines() if line.startswith("bronze_events"))
    assert bronze_line.split()[1:3] == ["0", "3,000"]
    assert "(not written yet)" in next(line for line in result.output.splitlines() if line.startswith("kg_edges"))

    assert runner.invoke(app, ["silver", "--start", "2019-10-01", "--end", "2019-10-03"]).exit_code == 0
    result = runner.invoke(app, ["gold", "--start", "2019-10-01", "--end", "2019-10-02", "--run-id", "week"])
    assert result.exit_code == 0, result.output
    assert result.output.index("gold as of 2019-10-01") < result.output.index("gold as of 2019-10-02")
    assert result.output.count("quality: user_features") == 2
    users = storage.read_table(spark, "user_features")
    assert sorted(str(r.as_of_date) for r in users.select("as_of_date").distinct().collect()) == [
        "2019-10-01", "2019-10-02"
    ]  # fmt: skip
    # each date saw the silver history up to itself alone (the shop's third day is in silver too)
    views = storage.read_table(spark, "silver_events").filter((F.col("event_type") == "view") & ~F.col("is_bot"))
    for day in ("2019-10-01", "2019-10-02"):
        counted = users.filter(F.col("as_of_date") == day).agg(F.sum("views_30d")).collect()[0][0]
        assert counted == views.filter(F.col("event_date") <= day).count(), day
    assert published_version(spark, "user_features") == storage.table_version("user_features")
    gold_runs = storage.read_table(spark, "run_metrics").filter(F.col("stage") == "gold").select("run_id").distinct()
    assert sorted(r.run_id for r in gold_runs.collect()) == ["week-20191001", "week-20191002"]


def test_pipeline_on_the_sample_fills_every_stage_and_prints_where_outputs_are(sample_pipeline, pipeline_lake):
    lake, result = pipeline_lake, sample_pipeline[1]
    assert f"lake (Delta tables): {lake / 'lake'}" in result.output
    assert "bronze_events: 17,435 rows from 1 new files" in result.output
    assert (
        "17,410 kept of 17,435 bronze rows (5 exact duplicates, 19 repeats collapsed, 1 quarantined)" in result.output
    )
    assert "gold as of 2019-10-01: interactions" in result.output
    table_lines = [line.split() for line in result.output.splitlines()[-len(TABLES) :]]
    listed = {words[0]: words[2] for words in table_lines}
    for table in ("quarantine_events", "silver_events", "interactions", "item_similarity", "cf_recommendations",
                  "user_features", "item_features", "items", "item_embeddings", "kg_nodes", "kg_edges"):  # fmt: skip
        assert listed[table] not in ("-", "0"), table
    assert "item_embeddings (all-MiniLM-L6-v2, dim 384): 5,657 items embedded" in result.output
    assert "836 without any text (not embedded)" in result.output
    assert "SIMILAR_TO pairs sharing a leaf category:" in result.output
    for table in ("bronze_events", "silver_events", "interactions", "user_features", "item_features",
                  "item_embeddings", "kg_nodes", "kg_edges"):  # fmt: skip
        assert f"quality: {table} v0 passed" in result.output, table
    assert (lake / "reports" / "data_docs" / "index.html").is_file()


def test_embed_and_kg_commands_rerun_incrementally_and_a_failed_gate_keeps_the_last_good_version(
    spark, pipeline_lake, monkeypatch
):
    result = runner.invoke(app, ["embed"])
    assert result.exit_code == 0, result.output
    assert ": 0 items embedded, 5,657 unchanged" in result.output
    result = runner.invoke(app, ["kg", "--date", "2019-10-01"])
    assert result.exit_code == 0 and "kg_edges: " in result.output

    from expectations.gate import published_version
    from shoplake.settings import get_settings

    monkeypatch.setenv("SHOPLAKE_QUALITY_MAX_QUARANTINE_SHARE", "0")  # the sample's truncated line now fails silver
    get_settings.cache_clear()
    result = runner.invoke(app, ["silver", "--date", "2019-10-01"])
    assert result.exit_code == 2
    assert "quality gate failed, nothing published" in result.output
    assert "silver_events v1: expect_column_pair_values_a_to_be_greater_than_b" in result.output
    assert published_version(spark, "silver_events") == 0
    result = runner.invoke(app, ["quality"])
    assert result.exit_code == 0 and "FAILED" in result.output and "runs.html" in result.output


def test_silver_and_gold_commands_take_dates(spark, lake):
    assert runner.invoke(app, ["ingest", "--events", str(SAMPLE_EVENTS)]).exit_code == 0
    result = runner.invoke(app, ["silver", "--start", "2019-10-01", "--end", "2019-10-01"])
    assert result.exit_code == 0, result.output
    assert "silver_events 2019-10-01..2019-10-01: 17,410 kept" in result.output
    result = runner.invoke(app, ["gold"])
    assert result.exit_code == 0 and "gold as of 2019-10-01" in result.output
    result = runner.invoke(app, ["silver", "--start", "2019-10-02", "--end", "2019-10-01"])
    assert result.exit_code == 2 and "end 2019-10-01 is before start 2019-10-02" in result.output
    result = runner.invoke(app, ["silver", "--date", "2019-13-01"])
    assert result.exit_code != 0 and "2019-13-01" in result.output


def test_bad_input_exits_non_zero_with_one_clear_line(spark, lake, tmp_path):
    bad = tmp_path / "events.txt"
    bad.write_text("hello")
    result = runner.invoke(app, ["ingest", "--events", str(bad)])
    assert result.exit_code == 2
    assert f"error: {bad}: not an events file" in result.output
    result = runner.invoke(app, ["ingest", "--events", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "no such file" in result.output
    result = runner.invoke(app, ["ingest"])
    assert result.exit_code == 2 and "error: give --events, --items or both" in result.output

    # events and a catalogue together: whichever is refused, neither is committed
    from shoplake import storage

    catalog, bad_catalog, no_header = tmp_path / "items.jsonl", tmp_path / "bad.jsonl", tmp_path / "events.csv"
    catalog.write_text('{"item_id": 9, "title": "Kettle"}\n')
    bad_catalog.write_text('{"item_id": "abc"}\n')
    no_header.write_text("2019-10-01 00:00:00 UTC,view,1,2,,,1.0,3,s\n")
    result = runner.invoke(app, ["ingest", "--events", str(no_header), "--items", str(catalog)])
    assert result.exit_code == 2 and "not a CSV events file" in result.output
    result = runner.invoke(app, ["ingest", "--events", str(SAMPLE_EVENTS), "--items", str(bad_catalog)])
    assert result.exit_code == 2 and "item_id that is not an integer" in result.output
    assert storage.table_version("items") is None and storage.table_version("bronze_events") is None
    result = runner.invoke(app, ["vacuum", "not_a_table"])
    assert result.exit_code == 2 and "unknown table 'not_a_table'" in result.output
    for command in ("vacuum", "optimize"):  # an empty lake: said, not a silent exit 0
        result = runner.invoke(app, [command])
        assert result.exit_code == 2 and "no table has been written yet in " in result.output
    us_times = tmp_path / "us_times.csv"  # every time unreadable: landed (quarantined later), nothing built
    us_times.write_text(
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n"
        "10/01/2019 00:00:00,view,1,2,,,1.0,3,s1\n"
    )
    result = runner.invoke(app, ["pipeline", "--events", str(us_times)])
    assert result.exit_code == 2, result.output
    assert "the given files hold no event with a readable time (a changed time format?)" in result.output
    assert storage.table_version("bronze_events") is not None and storage.table_version("silver_events") is None
