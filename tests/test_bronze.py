"""Bronze keeps every line, numbered as in the file, and lands each file once."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import RAW_EVENT_COLUMNS
from shoplake.errors import InputError
from spark_jobs import bronze
from tests.conftest import SAMPLE_EVENTS

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HEADER = ",".join(RAW_EVENT_COLUMNS)
ROW = "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfed738c"


def land(spark, *paths, run_id="run-1"):
    return bronze.land_event_files(spark, [str(p) for p in paths], run_id=run_id, ingested_at=AT)


def bronze_rows(spark):
    return storage.read_table(spark, "bronze_events").orderBy("source_file", "line_number").collect()


def test_every_line_of_the_sample_is_kept_with_its_true_line_number(spark, lake):
    split_size = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(64 * 1024))  # ~36 splits: numbering must cross them
    try:
        result = land(spark, SAMPLE_EVENTS)
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", split_size)
    lines = SAMPLE_EVENTS.read_text().split("\n")
    assert result.rows_landed == len(lines) - 1 == 17_435  # every line but the header
    rows = bronze_rows(spark)
    for row in rows:
        rebuilt = ",".join("" if row[c] is None else row[c] for c in RAW_EVENT_COLUMNS[: row.field_count])
        assert rebuilt == lines[row.line_number - 1], row.line_number


def test_the_truncated_last_line_keeps_its_raw_text(spark, lake):
    land(spark, SAMPLE_EVENTS)
    last = storage.read_table(spark, "bronze_events").filter(F.col("line_number") == 17_436).first()
    assert last.field_count == 8
    assert last.raw_line == SAMPLE_EVENTS.read_text().split("\n")[-1]
    assert last.user_session is None and last.user_id == "52040330"
    assert storage.read_table(spark, "bronze_events").filter(F.col("raw_line").isNotNull()).count() == 1


def test_landing_the_same_file_again_is_a_no_op(spark, lake, tmp_path):
    copy = tmp_path / "same-bytes-other-name.csv"
    copy.write_bytes(SAMPLE_EVENTS.read_bytes())
    first = land(spark, SAMPLE_EVENTS)
    again = land(spark, SAMPLE_EVENTS, copy, run_id="run-2")
    assert again.rows_landed == 0 and again.files_landed == ()
    assert set(again.files_already_landed) == {str(SAMPLE_EVENTS), str(copy)}
    assert storage.table_version("bronze_events") == first.version


def test_two_runs_landing_one_file_at_once_keep_it_once(spark, lake, tmp_path, monkeypatch):
    """Both find the file new and appends never conflict, so both committed it (bronze held it twice, and the
    second run then failed on run_metrics). The run that committed second takes its rows back out."""
    first = tmp_path / "first.csv"
    first.write_text(f"{HEADER}\n{ROW}\n")
    land(spark, first, run_id="run-0")
    real_move = storage._move_into_table
    raced = []

    def move_after_a_competitor_commits(*args, **kwargs):
        if not raced:  # run-1 checks after run-2 did, and commits while run-2 is between staging and commit
            raced.append(True)
            land(spark, SAMPLE_EVENTS, run_id="run-1")
        return real_move(*args, **kwargs)

    monkeypatch.setattr(storage, "_move_into_table", move_after_a_competitor_commits)
    late = land(spark, SAMPLE_EVENTS, run_id="run-2")
    assert (late.files_landed, late.files_already_landed, late.rows_landed) == ((), (str(SAMPLE_EVENTS),), 0)
    runs = storage.read_table(spark, "bronze_events").groupBy("ingest_run_id").count().collect()
    assert {r.ingest_run_id: r["count"] for r in runs} == {"run-0": 1, "run-1": 17_435}


def test_a_bookkeeping_write_is_tried_again_while_another_writer_commits_first():
    from shoplake.errors import WriteConflictError

    tries = []

    def conflicted_twice():
        tries.append(1)
        if len(tries) < 3:
            raise WriteConflictError("table run_metrics: another writer committed first")
        return "written"

    assert storage.retry_conflicts(conflicted_twice) == "written" and len(tries) == 3

    def always_conflicted():
        raise WriteConflictError("table run_metrics: another writer committed first")

    with pytest.raises(WriteConflictError):
        storage.retry_conflicts(always_conflicted, attempts=2)


def test_small_files_that_share_a_split_are_numbered_each_from_its_own_header(spark, lake, tmp_path):
    folder = tmp_path / "odd #1 100%+ü"  # Spark names files by URI: the name must map back to the path given
    folder.mkdir()
    paths = []
    for n in range(3):
        path = folder / f"day {n}.csv"
        path.write_text("\n".join([HEADER, *(ROW.replace("541312140", f"{n}{k}") for k in range(n + 2))]) + "\n")
        paths.append(path)
    packed = {"spark.sql.files.openCostInBytes": "1", "spark.sql.files.minPartitionNum": "1"}  # one split for all
    for key, value in packed.items():
        spark.conf.set(key, value)
    try:
        files = [bronze.inspect_event_file(str(p)) for p in paths]
        assert bronze.read_lines(spark, files).rdd.getNumPartitions() == 1
        land(spark, *paths)
    finally:
        for key in packed:
            spark.conf.unset(key)
    got = {(r.source_file, r.line_number, r.user_id) for r in bronze_rows(spark)}
    assert got == {(str(paths[n]), k + 2, f"{n}{k}") for n in range(3) for k in range(n + 2)}


def test_splits_of_one_day_are_written_as_read_and_splits_mixing_days_are_rebalanced_by_date(spark, lake, tmp_path):
    def write(name, dates):
        path = tmp_path / name
        path.write_text("\n".join([HEADER, *(ROW.replace("2019-10-01", d) for _ in range(100) for d in dates)]) + "\n")
        return bronze.inspect_event_file(str(path))

    by_day = [write(f"{d}.csv", [d]) for d in ("2019-10-01", "2019-10-02")]
    mixed = write("mixed.csv", ["2019-10-03", "2019-10-04"])
    gzipped = tmp_path / "mixed.csv.gz"
    gzipped.write_bytes(gzip.compress((tmp_path / "mixed.csv").read_bytes()))
    jsonl = tmp_path / "day.jsonl"
    jsonl.write_text(json.dumps(dict(zip(RAW_EVENT_COLUMNS, ROW.split(","), strict=True))) + "\n")
    split_size = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(4 * 1024))  # each file in several splits
    try:

        def one_day_each(files):
            return bronze.split_offsets(bronze.read_lines(spark, files), files).one_day_each

        assert one_day_each(by_day) is True
        assert one_day_each([*by_day, mixed]) is False
        assert one_day_each([bronze.inspect_event_file(str(gzipped))]) is False  # one split, two days
        assert one_day_each([bronze.inspect_event_file(str(jsonl))]) is False  # no leading time: not known
        land(spark, mixed.path)
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", split_size)
    written = (
        storage.read_table(spark, "bronze_events")
        .groupBy("event_date")
        .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("_metadata.file_path").alias("files"))
    )
    assert sorted((r.event_date.day, r.rows, r.files) for r in written.collect()) == [(3, 100, 1), (4, 100, 1)]


def test_provenance_and_parsed_event_date(spark, lake, tmp_path):
    path = tmp_path / "day.csv"
    sentinel = "1970-01-01 00:00:00 UTC,view,1,2,,,1.0,3,s"  # "no time" in many systems: placed on no day either
    path.write_text(f"{HEADER}\n{ROW}\nnot-a-time,view,1,2,,,1.0,3,s\n{sentinel}\n")
    land(spark, path)
    good, bad, too_early = bronze_rows(spark)
    assert (good.source_file, good.line_number, good.ingest_run_id) == (str(path), 2, "run-1")
    assert good.file_checksum == bronze.file_checksum(str(path)) and len(good.file_checksum) == 64
    assert good.event_date == dt.date(2019, 10, 1) and good.category_code is None
    assert (bad.line_number, bad.event_date, bad.field_count, bad.raw_line) == (3, None, 9, None)
    assert (too_early.line_number, too_early.event_date) == (4, None)


def test_json_lines_gzip_and_reordered_csv_headers_land_alike(spark, lake, tmp_path):
    record = dict(zip(RAW_EVENT_COLUMNS, ROW.split(","), strict=True))
    record["product_id"] = 44600062  # a number in JSON is kept as its text
    jsonl = tmp_path / "events.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.write(json.dumps({k: v for k, v in record.items() if k != "brand"}) + "\n")
        handle.write("{broken json\n")
        handle.write('{"eventTime": "2019-10-01", "kind": "view"}\n')  # an object, but none of the schema's keys
    reordered = tmp_path / "reordered.csv"
    columns = list(reversed(RAW_EVENT_COLUMNS))
    reordered.write_text(",".join(columns) + "\n" + ",".join(str(record[c]) for c in columns) + "\n")
    land(spark, jsonl, reordered)
    rows = {(r.source_file, r.line_number): r for r in bronze_rows(spark)}
    full, no_brand, broken, foreign = (rows[(str(jsonl), n)] for n in (1, 2, 3, 4))
    assert (full.product_id, full.brand, full.field_count, full.raw_line) == ("44600062", "shiseido", 9, None)
    assert (no_brand.brand, no_brand.field_count, no_brand.raw_line) == (None, 9, None)  # an absent key: empty
    assert (broken.field_count, broken.raw_line, broken.event_time) == (0, "{broken json", None)
    assert (foreign.field_count, foreign.raw_line) == (0, '{"eventTime": "2019-10-01", "kind": "view"}')
    csv_row = rows[(str(reordered), 2)]
    assert [csv_row[c] or "" for c in RAW_EVENT_COLUMNS] == ROW.split(",")


def test_quoted_commas_are_one_field(spark, lake, tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text(f'{HEADER}\n2019-10-01 00:00:00 UTC,view,1,2,"a,b",brand,1.0,3,s\n'
                    '2019-10-01 00:00:00 UTC,view,1,2,a.b,"say ""hi"", then ""bye""",1.0,3,s\n')  # fmt: skip
    land(spark, path)
    row, doubled = bronze_rows(spark)
    assert (row.category_code, row.field_count, row.raw_line) == ("a,b", 9, None)
    # a quote inside quotes is doubled (RFC 4180: Excel, pandas, PostgreSQL's CSV) and read back as one quote
    assert (doubled.brand, doubled.field_count, doubled.raw_line) == ('say "hi", then "bye"', 9, None)


def test_lines_of_the_wrong_length_keep_their_field_count_and_raw_text(spark, lake, tmp_path):
    path = tmp_path / "ragged.csv"
    lines = [
        ROW,  # 9 fields
        "",  # an empty line: one empty field
        ROW + ",extra",  # 10
        ROW.rsplit(",", 2)[0],  # 7
        ROW.replace(",shiseido,", ',"shiseido,'),  # an unclosed quote: only the 3 commas after it separate
        ROW.replace(",shiseido,", ',"shi,seido",'),  # 9, one of them quoted
    ]
    path.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    land(spark, path)
    rows = bronze_rows(spark)
    assert [(r.line_number, r.field_count) for r in rows] == [(2, 9), (3, 1), (4, 10), (5, 7), (6, 4), (7, 9)]
    assert [r.line_number for r in rows if r.raw_line is not None] == [3, 4, 5, 6]
    assert [r.raw_line for r in rows if r.line_number in (4, 6)] == [lines[2], lines[4]]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("events.parquet", "x", "not an events file"),
        ("events.csv", "a,b\n1,2\n", "header lacks event_time"),
        ("events.csv", "", "empty file"),
        ("events.jsonl", "[1, 2]\n", "not JSON lines"),
        ("events.csv.gz", "not gzip at all", "unreadable"),
    ],
)
def test_bad_files_are_refused_before_anything_is_committed(spark, lake, tmp_path, name, content, message):
    good = tmp_path / "good.csv"
    good.write_text(f"{HEADER}\n{ROW}\n")
    bad = tmp_path / name
    bad.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        land(spark, good, bad)
    assert str(bad) in str(error.value)
    assert storage.table_version("bronze_events") is None


def test_a_truncated_gzip_is_refused_by_name_and_nothing_is_committed(spark, lake, tmp_path):
    """Its first line reads, so the file passes the up-front checks; Spark meets the cut while landing."""
    whole = gzip.compress((HEADER + "\n" + "\n".join([ROW] * 20_000) + "\n").encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        InputError, match=rf"{cut}: unreadable \(.*Unexpected end of input stream.*\); nothing was landed"
    ):
        land(spark, cut)
    assert storage.table_version("bronze_events") is None


def test_a_missing_file_is_named(spark, lake, tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}/missing.csv: no such file"):
        land(spark, tmp_path / "missing.csv")
