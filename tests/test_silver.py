"""Silver's rules at their boundaries, late data, reruns, and the real sample end to end."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from shoplake import storage
from shoplake.catalog import RAW_EVENT_COLUMNS
from spark_jobs import bronze, silver
from spark_jobs.silver import ReconciliationError, SilverRules, check_reconciliation
from tests.conftest import SAMPLE_EVENTS

INGESTED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
PROCESSED = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
D1, D2 = dt.date(2019, 10, 1), dt.date(2019, 10, 2)


def event(
    time, kind="view", product="100", user="7", session="s-1", price="10.00", category="1", code="a.b", brand="x"
):
    return f"{time},{kind},{product},{category},{code},{brand},{price},{user},{session}"


def land(spark, tmp_path, name, lines, run_id="r"):
    path = tmp_path / name
    path.write_text(",".join(RAW_EVENT_COLUMNS) + "\n" + "\n".join(lines) + "\n")
    return bronze.land_event_files(spark, [str(path)], run_id=run_id, ingested_at=INGESTED)


def run(spark, dates=(D1,), rules=None, run_id="s"):
    return silver.run_silver(spark, list(dates), run_id=run_id, processed_at=PROCESSED, rules=rules)


def silver_rows(spark):
    return storage.read_table(spark, "silver_events").orderBy("event_time", "product_id", "line_number").collect()


def test_exact_duplicates_and_repeats_at_the_window_boundary(spark, lake, tmp_path):
    land(spark, tmp_path, "day.csv", [
        event("2019-10-01 10:00:00.000000"),
        event("2019-10-01 10:00:01.900000"),  # 1.9 s after the same action: collapsed
        event("2019-10-01 10:00:00.000000", product="200"),
        event("2019-10-01 10:00:02.100000", product="200"),  # 2.1 s: a new action
        event("2019-10-01 11:00:00.000000", product="300"),
        event("2019-10-01 11:00:00.000000", product="300"),  # the very same event again
        event("2019-10-01 11:00:01.000000", product="300", kind="cart"),  # another type is another action
    ])  # fmt: skip
    result = run(spark)
    assert result.counts == {"kept": 5, "exact_duplicate": 1, "collapsed": 1, "quarantined": 0}
    kept = [(r.product_id, r.event_type, r.event_time.strftime("%H:%M:%S.%f")) for r in silver_rows(spark)]
    assert kept == [(100, "view", "10:00:00.000000"), (200, "view", "10:00:00.000000"),
                    (200, "view", "10:00:02.100000"), (300, "view", "11:00:00.000000"),
                    (300, "cart", "11:00:01.000000")]  # fmt: skip


def test_sessions_without_ids_split_after_thirty_minutes_and_are_stable(spark, lake, tmp_path):
    land(spark, tmp_path, "day.csv", [
        event("2019-10-01 10:00:00", session=""),
        event("2019-10-01 10:29:00", session="", product="101"),  # 29 min: same session
        event("2019-10-01 11:00:00", session="", product="102"),  # 31 min: a new one
        event("2019-10-01 11:05:00", session="given", product="103"),  # the shop's own id wins
    ])  # fmt: skip
    run(spark)
    first = [r.session_id for r in silver_rows(spark)]
    assert first[0] == first[1] != first[2]
    assert first[0].startswith("gap-") and first[3] == "given"
    run(spark)
    assert [r.session_id for r in silver_rows(spark)] == first


def test_a_day_is_judged_alone_so_a_date_run_alone_matches_a_range_run(spark, lake, tmp_path):
    land(spark, tmp_path, "days.csv", [
        event("2019-10-01 23:59:59.500000"),
        event("2019-10-02 00:00:00.500000"),  # 1 s later, but the first of its day: kept
        event("2019-10-01 23:50:00", user="8", session=""),
        event("2019-10-02 00:05:00", user="8", session="", product="101"),  # 15 min later: a new day, a new session
    ])  # fmt: skip
    ranged = run(spark, dates=(D1, D2))
    assert ranged.counts == {"kept": 4, "exact_duplicate": 0, "collapsed": 0, "quarantined": 0}
    sessions = {r.event_date: r.session_id for r in silver_rows(spark) if r.user_id == 8}
    assert sessions[D1] != sessions[D2]
    before = storage.read_table(spark, "silver_events").filter(F.col("event_date") == D2).collect()
    alone = run(spark, dates=(D2,))
    assert alone.counts == {"kept": 2, "exact_duplicate": 0, "collapsed": 0, "quarantined": 0}
    assertDataFrameEqual(storage.read_table(spark, "silver_events").filter(F.col("event_date") == D2), before)


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2019-10-01 02:00:05 UTC", "2019-10-01 02:00:05"),  # REES46
        ("2019-10-01 02:00:05 Europe/Berlin", "2019-10-01 00:00:05"),
        ("2019-10-01T02:00:05Z", "2019-10-01 02:00:05"),
        ("2019-10-01T02:00:05.123Z", "2019-10-01 02:00:05.123"),
        ("2019-10-01T02:00:05.123456789Z", "2019-10-01 02:00:05.123456"),  # nanoseconds: Spark keeps micros
        ("2019-10-01T04:00:05+02:00", "2019-10-01 02:00:05"),
        ("2019-10-01T04:00:05+0200", "2019-10-01 02:00:05"),
        ("2019-10-01 04:00:05+02:00", "2019-10-01 02:00:05"),  # Python's str(datetime), pandas' CSV
        ("2019-10-01 04:00:05.5+02", "2019-10-01 02:00:05.5"),  # PostgreSQL's timestamptz text
        ("2019-10-01 02:00:05 +0000", "2019-10-01 02:00:05"),
        ("2019-10-01 02:00:05", "2019-10-01 02:00:05"),  # naive: UTC
        ("2019-10-01T02:00:05", "2019-10-01 02:00:05"),
        (" 2019-10-01 02:00:05 ", "2019-10-01 02:00:05"),
        ("2019-10-01", None),
        ("1569895205", None),  # epoch seconds are not guessed at
        ("yesterday-ish", None),
        ("2019-13-01 02:00:05", None),
    ],
)
def test_event_times_in_the_formats_shops_write_parse_to_utc(spark, text, utc):
    from spark_jobs.columns import parse_event_time

    (got,) = spark.createDataFrame([(text,)], "t string").select(parse_event_time("t")).first()
    assert got == (dt.datetime.fromisoformat(utc) if utc else None)


def test_category_paths_as_shops_and_catalogue_feeds_write_them_become_dotted(spark):
    """One form for the taxonomy to split: REES46's dotted codes, and the `A > B > C` of Google's product taxonomy
    and most catalogue feeds (before, that landed as one category named "home & garden > lighting")."""
    from spark_jobs.columns import category_path

    cases = {
        "electronics.audio.headphone": "electronics.audio.headphone",  # REES46, as it was
        "Electronics.Smartphone": "electronics.smartphone",
        "Home & Garden > Lighting > Lamps": "home & garden.lighting.lamps",
        "Toys>Lego": "toys.lego",
        " Toys >  > Lego > ": "toys.lego",  # an empty level is dropped
        ">": None,
        "  ": None,
        None: None,
    }
    frame = spark.createDataFrame([(text,) for text in cases], "c string")
    got = {r.c: r.path for r in frame.select("c", category_path("c").alias("path")).collect()}
    assert got == cases


def test_each_rule_quarantines_with_its_reason(spark, lake, tmp_path):
    land(spark, tmp_path, "day.csv", [
        "2019-10-01 10:00:00 UTC,view,1,2",
        event("yesterday-ish"),
        event("2027-01-01 00:00:00"),
        event("2019-10-01 10:00:00", user=""),
        event("2019-10-01 10:00:00", user="u-7"),
        event("2019-10-01 10:00:00", product=""),
        event("2019-10-01 10:00:00", product="abc"),
        event("2019-10-01 10:00:00", kind="click"),
        event("2019-10-01 10:00:00", kind="cart", price="0"),
        event("2019-10-01 10:00:00", kind="purchase", price="-3.5"),
        event("2019-10-01 10:00:00", kind="view", price="0", product="500"),  # a view keeps, without a price
        event("2019-10-01 10:00:00", kind=" AddToCart ", product="600"),  # synonyms are normalised
        event("2019-10-01 10:00:00", kind="TRANSACTION", product="700"),
        # Spark reads these as doubles, and NaN compares above every number: they passed as prices, spend went NaN
        event("2019-10-01 10:00:00", kind="purchase", price="NaN"),
        event("2019-10-01 10:00:00", kind="cart", price="Infinity"),
        event("2019-10-01 10:00:00", kind="purchase", price="1e400"),
        event("2019-10-01 10:00:00", kind="view", price="nan", product="800"),
        event("1970-01-01 00:00:00"),  # "no time" in many systems: silver processed every date from 1970 on
    ])  # fmt: skip
    result = run(spark)
    reasons = {r.line_number: (r.reason, r.detail) for r in storage.read_table(spark, "quarantine_events").collect()}
    assert reasons == {
        2: ("wrong_column_count", "4 fields, expected 9"),
        3: ("unparseable_time", "event_time yesterday-ish"),
        4: ("future_time", "event_time 2027-01-01 00:00:00 is after ingestion + tolerance"),
        5: ("missing_user_id", "user_id is empty"),
        6: ("invalid_user_id", "user_id u-7"),
        7: ("missing_product_id", "product_id is empty"),
        8: ("invalid_product_id", "product_id abc"),
        9: ("unknown_event_type", "event_type click"),
        10: ("non_positive_price", "cart with price 0"),
        11: ("non_positive_price", "purchase with price -3.5"),
        15: ("non_positive_price", "purchase with price NaN"),
        16: ("non_positive_price", "cart with price Infinity"),
        17: ("non_positive_price", "purchase with price 1e400"),
        19: ("too_early_time", "event_time 1970-01-01 00:00:00 is before 2000-01-01"),
    }
    kept = {r.product_id: (r.event_type, r.price) for r in silver_rows(spark)}
    assert kept == {500: ("view", None), 600: ("cart", 10.0), 700: ("purchase", 10.0), 800: ("view", None)}
    assert result.bronze_rows == 18 and result.counts["quarantined"] == 14


def test_json_records_may_leave_out_keys_the_rules_do_not_need(spark, lake, tmp_path):
    path = tmp_path / "day.jsonl"
    records = [
        {"event_time": "2019-10-01 10:00:00 UTC", "event_type": "view", "product_id": 100, "user_id": 7},
        {"event_time": "2019-10-01 10:05:00 UTC", "event_type": "cart", "product_id": 200, "user_id": 7,
         "price": 9.5, "brand": None, "user_session": "s-9"},
        {"event_time": "2019-10-01 10:06:00 UTC", "event_type": "cart", "product_id": 300, "user_id": 7},
        {"event_time": "2019-10-01 10:07:00 UTC", "event_type": "view", "product_id": 400},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n[1, 2]\n")
    bronze.land_event_files(spark, [str(path)], run_id="r", ingested_at=INGESTED)
    result = run(spark)
    kept = [(r.product_id, r.event_type, r.price, r.brand, r.session_id[:4]) for r in silver_rows(spark)]
    assert kept == [(100, "view", None, None, "gap-"), (200, "cart", 9.5, None, "s-9")]
    reasons = {r.line_number: (r.reason, r.detail) for r in storage.read_table(spark, "quarantine_events").collect()}
    assert reasons == {
        3: ("non_positive_price", "cart with price null"),  # the rules need a cart's price, so it is missed
        4: ("missing_user_id", "user_id is empty"),
        5: ("wrong_column_count", "0 fields, expected 9"),  # not a JSON object
    }
    assert result.counts == {"kept": 2, "exact_duplicate": 0, "collapsed": 0, "quarantined": 3}


def test_bots_are_flagged_and_kept(spark, lake, tmp_path):
    fast = [event(f"2019-10-01 10:00:{s:02d}", user="66", product=str(900 + s)) for s in range(0, 60, 10)]  # 6 in 1 min
    calm = [event(f"2019-10-01 10:00:{s:02d}", user="77", product=str(900 + s)) for s in range(0, 50, 10)]  # 5
    land(spark, tmp_path, "day.csv", fast + calm)
    run(spark, rules=SilverRules(bot_window_seconds=300, bot_max_events_per_window=5))
    flags = {(r.user_id, r.is_bot) for r in silver_rows(spark)}
    assert flags == {(66, True), (77, False)}


def test_a_late_file_is_merged_into_its_date_and_other_dates_stay(spark, lake, tmp_path):
    land(spark, tmp_path, "d1.csv", [event("2019-10-01 10:00:00")])
    land(spark, tmp_path, "d2.csv", [event("2019-10-02 10:00:00", product="200")])
    run(spark, dates=(D1, D2))
    late = land(spark, tmp_path, "d1-late.csv", [event("2019-10-01 23:00:00", product="300")])
    assert bronze.event_dates(spark, late.checksums) == [D1]
    d2_files_before = {p for p in _files(spark) if "2019-10-02" in p}
    run(spark, dates=(D1,))
    assert [(r.event_date, r.product_id) for r in silver_rows(spark)] == [(D1, 100), (D1, 300), (D2, 200)]
    assert {p for p in _files(spark) if "2019-10-02" in p} == d2_files_before


def test_silver_and_quarantine_rows_keep_the_provenance_of_their_bronze_row(spark, lake, tmp_path):
    land(spark, tmp_path, "a.csv", [event("2019-10-01 10:00:00"), event("2019-10-01 10:05:00", user="")], run_id="r1")
    land(spark, tmp_path, "b.csv", [event("2019-10-01 09:00:00", product="200")], run_id="r2")
    run(spark)
    source = ["source_file", "line_number", "file_checksum", "ingest_run_id"]
    bronze_sources = {tuple(r) for r in storage.read_table(spark, "bronze_events").select(source).collect()}
    kept = {tuple(r) for r in storage.read_table(spark, "silver_events").select(source).collect()}
    quarantined = {tuple(r) for r in storage.read_table(spark, "quarantine_events").select(source).collect()}
    assert kept | quarantined == bronze_sources and len(bronze_sources) == 3
    assert {(Path(f).name, n, run_id) for f, n, _, run_id in quarantined} == {("a.csv", 3, "r1")}


def test_rerunning_a_date_gives_an_identical_table(spark, lake, tmp_path):
    land(spark, tmp_path, "day.csv", [event(f"2019-10-01 1{h}:00:00", product=str(h), session="") for h in range(5)])
    run(spark)
    first = storage.read_table(spark, "silver_events")
    first_rows = first.collect()
    run(spark)
    assertDataFrameEqual(storage.read_table(spark, "silver_events"), first_rows)


def test_a_date_without_events_and_a_date_of_only_bad_rows_reconcile(spark, lake, tmp_path):
    land(spark, tmp_path, "d1.csv", [event("2019-10-01 10:00:00", user=""), event("2019-10-01 11:00:00", product="")])
    only_bad = run(spark, dates=(D1,))  # every row quarantined: no valid row to count them on the way
    assert (only_bad.bronze_rows, only_bad.counts["quarantined"], only_bad.counts["kept"]) == (2, 2, 0)
    empty = run(spark, dates=(dt.date(2019, 11, 5),))  # nothing landed for that date
    assert (empty.bronze_rows, sum(empty.counts.values())) == (0, 0)


def test_a_row_without_a_readable_time_counts_with_its_file_s_dates_or_else_once(spark, lake, tmp_path):
    """Undated rows were in every run's scope: one file of unreadable times weighed on each later day's quarantine
    share, and a big one failed every later day's gate."""
    land(spark, tmp_path, "d1.csv", [event("2019-10-01 10:00:00"), event("not a time")])
    land(spark, tmp_path, "d2.csv", [event("2019-10-02 10:00:00", product="200")])
    assert run(spark, dates=(D1,), run_id="a").bronze_rows == 2
    assert run(spark, dates=(D2,), run_id="b").bronze_rows == 1
    assert run(spark, dates=(D1,), run_id="c").bronze_rows == 2  # its file's date, rebuilt: counted as before
    land(spark, tmp_path, "changed-format.csv", [event("Oct 2 2019 10h"), event("Oct 2 2019 11h")])
    first = run(spark, dates=(D2,), run_id="d")
    assert (first.bronze_rows, first.counts["quarantined"]) == (3, 2)
    retry = run(spark, dates=(D2,), run_id="d")  # the same run again reaches the same verdict
    assert (retry.bronze_rows, retry.counts["quarantined"]) == (3, 2)
    assert run(spark, dates=(D2,), run_id="e").counts == {
        "kept": 1,
        "exact_duplicate": 0,
        "collapsed": 0,
        "quarantined": 0,
    }
    reasons = storage.read_table(spark, "quarantine_events").groupBy("reason").count().collect()
    assert {r.reason: r["count"] for r in reasons} == {"unparseable_time": 3}


def test_reconciliation_fails_loudly_when_rows_go_missing():
    counts = {"kept": 10, "exact_duplicate": 1, "collapsed": 1, "quarantined": 2}
    check_reconciliation(14, counts, 10, 2)
    with pytest.raises(ReconciliationError, match="bronze rows 15 != silver 10"):
        check_reconciliation(15, counts, 10, 2)
    with pytest.raises(ReconciliationError, match="silver committed 9 rows but 10 were kept"):
        check_reconciliation(14, counts, 9, 2)


@pytest.mark.slow
def test_the_real_sample_end_to_end(spark, lake):
    bronze.land_event_files(spark, [str(SAMPLE_EVENTS)], run_id="r", ingested_at=INGESTED)
    result = run(spark)
    assert result.bronze_rows == 17_435
    assert result.counts["exact_duplicate"] == 5  # the data set's README counts 5 exact duplicate rows
    assert sum(result.counts.values()) == result.bronze_rows
    (truncated,) = storage.read_table(spark, "quarantine_events").collect()
    assert (truncated.line_number, truncated.reason) == (17_436, "wrong_column_count")
    raw = storage.read_table(spark, "bronze_events")
    non_positive = raw.filter(F.col("price").cast("double") <= 0)
    assert non_positive.count() == 19 and {r.event_type for r in non_positive.collect()} == {"view"}
    events = storage.read_table(spark, "silver_events")
    assert events.filter(F.col("price") <= 0).count() == 0  # views keep no price rather than a wrong one
    kept_lines = {r.line_number for r in events.select("line_number").collect()}
    priceless = {r.line_number for r in non_positive.collect()} & kept_lines
    assert {r.line_number for r in events.filter(F.col("price").isNull()).collect()} == priceless
    assert events.select("event_id").distinct().count() == events.count() == result.counts["kept"]
    metrics = {r.metric: r.value for r in storage.read_table(spark, "run_metrics").filter("stage = 'silver'").collect()}
    assert metrics["bronze_rows"] == metrics["silver_rows"] + metrics["quarantined"] + metrics["duplicates_removed"]


def _files(spark):
    from deltalake import DeltaTable

    return DeltaTable(storage.table_uri("silver_events")).file_uris()
