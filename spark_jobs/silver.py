"""Silver: typed, deduplicated, sessionised events, with every bronze row accounted for.

For each date it processes, silver reads *all* bronze rows of that date — files that arrived late included — and
replaces the date's partition, so a rerun or a late file gives the table one complete run would have given.
Repeats and inactivity sessions are judged within a day, so a date's rows depend on that date's bronze rows alone:
a date run by itself gives what a run over a range gave it. Rows whose time does not parse have no date; every run
re-examines them and upserts them into quarantine.

Each bronze row goes exactly one way:
- ``quarantined``: it broke a rule (the first rule broken is its reason code, see ``REASONS``);
- ``exact_duplicate``: the same event again (same time, user, item, type, session, price, category, brand);
- ``collapsed``: the same user, item and type again that day, within ``repeat_window_seconds`` of the previous;
- ``kept``: a silver row. Bot-like users are flagged (``is_bot``), kept here, and left out of gold.

``run_metrics`` records the four counts; if they do not add up to the bronze rows read, or the rows committed to
silver and quarantine differ from the rows classified, the run fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Observation, SparkSession, Window
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import BRONZE_EVENTS, QUARANTINE_EVENTS, RAW_EVENT_COLUMNS, SILVER_EVENTS
from shoplake.errors import DataError, ShoplakeError
from shoplake.run_metrics import record_metrics
from shoplake.settings import Settings, get_settings
from spark_jobs.columns import EVENT_TYPE_SYNONYMS, blank_to_null, category_path, finite_number, parse_event_time

log = logging.getLogger(__name__)

EXPECTED_FIELDS = len(RAW_EVENT_COLUMNS)
REASONS = (
    "wrong_column_count", "unparseable_time", "future_time", "too_early_time", "missing_user_id", "invalid_user_id",
    "missing_product_id", "invalid_product_id", "unknown_event_type", "non_positive_price",
)  # fmt: skip
OUTCOMES = ("kept", "exact_duplicate", "collapsed", "quarantined")
PRICED_TYPES = ("cart", "purchase")  # a cart or purchase without a positive, finite price is quarantined
CONTENT_COLUMNS = ("user_session", "price", "category_id", "category_code", "brand")  # beyond time, user, item, type
FILE_FIELDS = ("source_file", "file_checksum", "ingest_run_id")  # one value per landed file: carried as a key
# what quarantine keeps besides the line number and the reason
REJECTED_FIELDS = (*RAW_EVENT_COLUMNS, "field_count", "raw_line", "detail", "event_date", *FILE_FIELDS)


class ReconciliationError(DataError):
    """Bronze rows were lost or invented between bronze and silver."""


@dataclass(frozen=True)
class SilverRules:
    future_tolerance_hours: float = 1.0
    earliest_event_date: dt.date = dt.date(2000, 1, 1)
    repeat_window_seconds: float = 2.0
    session_gap_minutes: float = 30.0
    bot_window_seconds: int = 300
    bot_max_events_per_window: int = 150

    @classmethod
    def from_settings(cls, settings: Settings) -> SilverRules:
        return cls(
            settings.future_tolerance_hours, settings.earliest_event_date, settings.repeat_window_seconds,
            settings.session_gap_minutes, settings.bot_window_seconds, settings.bot_max_events_per_window,
        )  # fmt: skip


@dataclass(frozen=True)
class SilverResult:
    dates: tuple[dt.date, ...]
    bronze_rows: int
    counts: dict[str, int]
    silver_version: int
    quarantine_version: int | None


def _seconds(column: Column) -> Column:
    return F.unix_micros(column) / 1_000_000


def transform_type(bronze: DataFrame, rules: SilverRules) -> DataFrame:
    """Typed columns plus ``reason``: null for a valid row, else the first rule the row breaks.

    Two projections: values are parsed once, then the rules read the parsed columns. Written as one expression,
    every rule that mentions the event time parses it again (Spark shares no work across a CASE's branches)."""
    synonyms = F.create_map(*(F.lit(v) for pair in EVENT_TYPE_SYNONYMS.items() for v in pair))
    parsed = bronze.select(
        "*",
        parse_event_time("event_time").alias("t_event_time"),
        F.try_element_at(synonyms, F.lower(F.trim(F.col("event_type")))).alias("t_event_type"),
        blank_to_null(F.col("user_id")).alias("_user"),
        blank_to_null(F.col("product_id")).alias("_product"),
        finite_number("price").alias("_price"),
    )
    event_time, event_type, price = F.col("t_event_time"), F.col("t_event_type"), F.col("_price")
    user, product = F.col("_user"), F.col("_product")
    too_late = _seconds(F.col("ingested_at")) + rules.future_tolerance_hours * 3600
    too_early = F.lit(dt.datetime.combine(rules.earliest_event_date, dt.time(), dt.UTC))
    rules_broken = [
        (F.col("field_count") != EXPECTED_FIELDS,
         F.format_string(f"%d fields, expected {EXPECTED_FIELDS}", F.col("field_count"))),
        (event_time.isNull(), F.concat(F.lit("event_time "), F.coalesce(F.col("event_time"), F.lit("null")))),
        (_seconds(event_time) > too_late, F.format_string("event_time %s is after ingestion + tolerance", F.trim(F.col("event_time")))),
        (event_time < too_early, F.format_string(f"event_time %s is before {rules.earliest_event_date}", F.trim(F.col("event_time")))),
        (user.isNull(), F.lit("user_id is empty")),
        (user.try_cast("long").isNull(), F.concat(F.lit("user_id "), user)),
        (product.isNull(), F.lit("product_id is empty")),
        (product.try_cast("long").isNull(), F.concat(F.lit("product_id "), product)),
        (event_type.isNull(), F.concat(F.lit("event_type "), F.coalesce(F.col("event_type"), F.lit("null")))),
        (event_type.isin(*PRICED_TYPES) & (price.isNull() | (price <= 0)),
         F.format_string("%s with price %s", event_type, F.coalesce(F.col("price"), F.lit("null")))),
    ]  # fmt: skip
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for code, (broken, why) in reversed(list(zip(REASONS, rules_broken, strict=True))):
        reason = F.when(broken, F.lit(code)).otherwise(reason)
        detail = F.when(broken, why).otherwise(detail)
    return parsed.select(
        *bronze.columns,
        "t_event_time",
        "t_event_type",
        product.try_cast("long").alias("t_product_id"),
        user.try_cast("long").alias("t_user_id"),
        F.when(price > 0, price).alias("t_price"),  # a view without a positive price keeps no price
        reason.alias("reason"),
        detail.alias("detail"),
    )


def file_key() -> Column:
    """A landed file's key: what rows carry through the shuffle instead of its path, checksum and run (~140 bytes)."""
    return F.xxhash64(*FILE_FIELDS)


def transform_landed_files(bronze: DataFrame) -> DataFrame:
    """``file_key`` and the provenance it stands for, one row per landed file."""
    return bronze.select(*FILE_FIELDS).distinct().withColumn("file_key", file_key())


def transform_restore_files(rows: DataFrame, files: DataFrame) -> DataFrame:
    """``rows`` with their file's provenance in place of ``file_key``. Every key comes from ``files``' bronze rows,
    so none is unmatched; a row lost or doubled here would fail the reconciliation of the rows committed."""
    return rows.join(F.broadcast(files), on="file_key", how="inner").drop("file_key")


def transform_classifiable(typed: DataFrame) -> DataFrame:
    """Every typed row with silver's typed, normalised columns (no outcome yet). A row that broke a rule keeps its
    ``reason`` and, in ``rejected``, the raw fields and provenance quarantine stores, so one pass over bronze fills
    both tables. Other rows' provenance travels as ``file_key`` and ``line_number`` (``transform_restore_files``
    puts it back): the strings were a quarter of silver's time through the shuffle, the sort and the cache."""
    rejected = F.when(F.col("reason").isNotNull(), F.struct(*REJECTED_FIELDS))
    return typed.select(
        F.col("t_event_time").alias("event_time"),
        F.col("t_event_type").alias("event_type"),
        F.col("t_product_id").alias("product_id"),
        blank_to_null(F.col("category_id")).try_cast("long").alias("category_id"),
        category_path("category_code").alias("category_code"),
        F.lower(blank_to_null(F.col("brand"))).alias("brand"),
        F.col("t_price").alias("price"),
        F.col("t_user_id").alias("user_id"),
        blank_to_null(F.col("user_session")).alias("user_session"),
        file_key().alias("file_key"),
        "line_number",
        F.to_date("t_event_time").alias("event_date"),
        "reason",
        rejected.alias("rejected"),
    )  # fmt: skip


def transform_quarantine(classified: DataFrame, run_id: str, quarantined_at: dt.datetime) -> DataFrame:
    """The quarantined rows as bronze had them (its ``event_date`` too: null when the time did not parse)."""
    return classified.filter(F.col("outcome") == "quarantined").select(
        *(F.col("rejected")[c].alias(c) for c in REJECTED_FIELDS), "line_number", "reason",
        F.lit(run_id).alias("run_id"), F.lit(quarantined_at).cast("timestamp").alias("quarantined_at"),
    )  # fmt: skip


def transform_by_day(rows: DataFrame, dates: int, parallelism: int) -> DataFrame:
    """``rows`` in one shuffle, by date, and by ``day_shard`` (a user hash) when there are fewer dates than
    ``parallelism``. Every later step groups rows within a user's day, so none shuffles again, and each task writes
    one file per date it holds."""
    dates = max(dates, 1)
    shards = -(-parallelism // dates)
    day_shard = F.pmod(F.xxhash64("user_id"), F.lit(shards))
    return rows.withColumn("day_shard", day_shard).repartition(dates * shards, "event_date", "day_shard")


def transform_classify_repeats(by_day: DataFrame, repeat_window_seconds: float) -> DataFrame:
    """``outcome``: quarantined for a row with a ``reason``; exact_duplicate or collapsed when the previous valid row
    of the same user, item and type that day is the same event, or came at most ``repeat_window_seconds`` earlier;
    otherwise kept. One window does it all (rows with a reason are never another row's previous)."""
    ordered = Window.partitionBy("event_date", "day_shard", "reason", "user_id", "product_id", "event_type").orderBy(
        "event_time", *CONTENT_COLUMNS, "file_key", "line_number"
    )
    previous = F.lag(F.struct("event_time", *CONTENT_COLUMNS)).over(ordered)
    same_content = F.lit(True)
    for column in ("event_time", *CONTENT_COLUMNS):
        same_content = same_content & previous[column].eqNullSafe(F.col(column))
    gap = _seconds(F.col("event_time")) - _seconds(previous["event_time"])
    outcome = (
        F.when(F.col("reason").isNotNull(), "quarantined")
        .when(previous.isNull(), "kept")
        .when(same_content, "exact_duplicate")
        .when(gap <= repeat_window_seconds, "collapsed")
        .otherwise("kept")
    )
    return by_day.withColumn("outcome", outcome)


def event_id(
    columns: Sequence[str] = ("event_time", "event_type", "product_id", "user_id", *CONTENT_COLUMNS),
) -> Column:
    """A content hash: equal for exact duplicates, so unique once they are removed. Times enter as microseconds:
    formatting them as text was a quarter of the hash's cost."""
    values = (F.unix_micros(c) if c == "event_time" else F.col(c) for c in columns)
    return F.md5(F.concat_ws("\u0001", *(F.coalesce(v.cast("string"), F.lit("\u0000")) for v in values)))


def transform_flag_bots(kept: DataFrame, window_seconds: int, max_events: int) -> DataFrame:
    """``is_bot``: the user sent more than ``max_events`` events within one ``window_seconds`` window that day."""
    bucket = F.floor(_seconds(F.col("event_time")) / window_seconds)
    bots = (
        kept.groupBy("user_id", "event_date", bucket.alias("bucket"))
        .count()
        .filter(F.col("count") > max_events)
        .select("user_id", "event_date", F.lit(True).alias("is_bot"))
        .distinct()
    )
    return kept.join(F.broadcast(bots), on=["user_id", "event_date"], how="left").withColumn(
        "is_bot", F.coalesce(F.col("is_bot"), F.lit(False))
    )


def transform_sessionize(by_day: DataFrame, gap_minutes: float) -> DataFrame:
    """``session_id``: the shop's ``user_session`` when present; otherwise a new session starts with the user's
    first event of the day and after every ``gap_minutes`` of inactivity, named by a hash of the user and the
    session's first event time (stable).

    Only the rows without a ``user_session`` are sorted into the inactivity window: a shop that names its sessions
    (REES46 does, for every row) pays no sort at all (sorting every row cost ~6 s of silver's ~72 at ten million
    events)."""
    named = by_day.filter(F.col("user_session").isNotNull()).withColumn("session_id", F.col("user_session"))
    unnamed = by_day.filter(F.col("user_session").isNull())
    # the partition columns are real columns, so both windows share one sort (a computed key is sorted twice)
    by_user = Window.partitionBy("event_date", "day_shard", "user_id").orderBy("event_time", "event_id")
    gap = _seconds(F.col("event_time")) - _seconds(F.lag("event_time").over(by_user))
    flagged = unnamed.withColumn("_starts", gap.isNull() | (gap > gap_minutes * 60))
    so_far = by_user.rowsBetween(Window.unboundedPreceding, 0)
    first_time = F.max(F.when(F.col("_starts"), F.col("event_time"))).over(so_far)  # times only grow: the latest start
    derived = F.concat(
        F.lit("gap-"), F.md5(F.concat_ws("|", F.col("user_id").cast("string"), first_time.cast("string")))
    )
    return named.unionByName(flagged.withColumn("session_id", derived).drop("_starts"))


def transform_silver(kept: DataFrame, files: DataFrame, rules: SilverRules, processed_at: dt.datetime) -> DataFrame:
    events = transform_sessionize(kept.withColumn("event_id", event_id()), rules.session_gap_minutes)
    events = transform_flag_bots(events, rules.bot_window_seconds, rules.bot_max_events_per_window)
    events = transform_restore_files(events, files)
    return events.withColumn("processed_at", F.lit(processed_at).cast("timestamp")).select(*SILVER_EVENTS.columns)


def transform_undated_in_scope(
    undated: DataFrame, files_of_dates: Sequence[str], quarantined_before: DataFrame
) -> DataFrame:
    """The bronze rows without a date (no readable time: only quarantine takes them) that a run for some dates
    classifies: those of files holding some of these dates, and those no other run has quarantined (a file without
    one readable time). An undated row that every run took weighed on every day's quarantine share, so one bad
    file failed each later day's gate. ``quarantined_before``: the keys of undated rows other runs quarantined."""
    earlier = quarantined_before.select("file_checksum", "line_number").withColumn("_quarantined", F.lit(True))
    return (
        undated.join(earlier, ["file_checksum", "line_number"], "left")
        .filter(F.col("file_checksum").isin(list(files_of_dates)) | F.col("_quarantined").isNull())
        .drop("_quarantined")
    )


def read_bronze_scope(spark: SparkSession, dates: Sequence[dt.date], run_id: str) -> DataFrame:
    """The bronze rows a silver run for ``dates`` classifies: those of the dates, and the undated rows that go with
    them (``transform_undated_in_scope``; rows that an earlier try of the same run quarantined stay in its scope,
    so a retry reaches the verdict the first try did). Bronze's log says whether it holds undated rows at all;
    usually it does not, and only the dates' partitions are read."""
    bronze = storage.read_table(spark, BRONZE_EVENTS)
    dated = bronze.filter(F.col("event_date").isin(list(dates)))
    if all(p["event_date"] is not None for p in storage.partition_values(BRONZE_EVENTS)):
        return dated
    undated = bronze.filter(F.col("event_date").isNull())
    undated_files = [r.file_checksum for r in undated.select("file_checksum").distinct().collect()]  # a few
    of_dates = dated.filter(F.col("file_checksum").isin(undated_files)).select("file_checksum").distinct()
    files_of_dates = [r.file_checksum for r in of_dates.collect()]
    quarantined_before = bronze.select("file_checksum", "line_number").limit(0)
    if storage.table_version(QUARANTINE_EVENTS) is not None:
        quarantine = storage.read_table(spark, QUARANTINE_EVENTS)
        quarantined_before = quarantine.filter(F.col("event_date").isNull() & (F.col("run_id") != run_id))
    return dated.unionByName(transform_undated_in_scope(undated, files_of_dates, quarantined_before))


def run_silver(
    spark: SparkSession,
    dates: Sequence[dt.date],
    *,
    run_id: str,
    processed_at: dt.datetime,
    rules: SilverRules | None = None,
) -> SilverResult:
    """Rebuild the silver partitions of ``dates`` from bronze; quarantine what breaks a rule; reconcile."""
    if not dates:
        raise ShoplakeError("silver needs at least one date to process")
    rules = rules or SilverRules.from_settings(get_settings())
    dates = tuple(sorted(set(dates)))
    scope = read_bronze_scope(spark, dates, run_id)
    typed = transform_type(scope, rules)
    files = transform_landed_files(scope)
    # Bronze is read once: the cached classification holds the quarantined rows' raw fields too. Its rows are
    # counted on the way in by an observation, so the reconciliation checks the classification, not itself.
    seen = Observation("silver_bronze_rows")
    observed = typed.observe(seen, _bronze_rows())
    by_day = transform_by_day(transform_classifiable(observed), len(dates), get_settings().spark_shuffle_partitions)
    classified = transform_classify_repeats(by_day, rules.repeat_window_seconds)
    classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {outcome: 0 for outcome in OUTCOMES}
        counts.update({r.outcome: r["count"] for r in classified.groupBy("outcome").count().collect()})
        if any(counts.values()):
            bronze_rows = seen.get["rows"]
        else:  # no row: Spark may have pruned an empty scope's plan, observation and all
            row = typed.agg(_bronze_rows()).first()
            assert row is not None  # a global aggregate always has one row
            bronze_rows = row["rows"]

        silver = transform_silver(classified.filter(F.col("outcome") == "kept"), files, rules, processed_at)
        written = storage.write_table(
            silver, SILVER_EVENTS, "overwrite_partitions", partitions=[{"event_date": d} for d in dates],
            run_id=run_id, clustered=True,
        )  # fmt: skip
        quarantine = transform_quarantine(classified, run_id, processed_at)
        quarantined = (
            storage.merge_table(quarantine, QUARANTINE_EVENTS, run_id=run_id) if counts["quarantined"] else None
        )
    finally:
        classified.unpersist()
    duplicates = counts["exact_duplicate"] + counts["collapsed"]
    metrics = {"bronze_rows": bronze_rows, "silver_rows": written.rows, "duplicates_removed": duplicates, **counts}
    record_metrics(spark, run_id, "silver", metrics, recorded_at=processed_at, run_date=dates[-1],
                   details={"bronze_rows": {"dates": [d.isoformat() for d in dates]}})  # fmt: skip
    check_reconciliation(bronze_rows, counts, written.rows, quarantined.rows if quarantined else 0)
    log.info("silver %s..%s: %s", dates[0], dates[-1], metrics)
    return SilverResult(dates, bronze_rows, counts, written.version, quarantined.version if quarantined else None)


def _bronze_rows() -> Column:
    return F.count(F.lit(1)).alias("rows")


def check_reconciliation(bronze_rows: int, counts: dict[str, int], silver_rows: int, quarantine_rows: int) -> None:
    """bronze = silver + quarantined + duplicates removed, and what was committed is what was classified."""
    accounted = sum(counts[o] for o in OUTCOMES)
    problems = []
    if accounted != bronze_rows:
        problems.append(f"bronze rows {bronze_rows} != silver {counts['kept']} + quarantined {counts['quarantined']}"
                        f" + exact duplicates {counts['exact_duplicate']} + collapsed {counts['collapsed']}")  # fmt: skip
    if silver_rows != counts["kept"]:
        problems.append(f"silver committed {silver_rows} rows but {counts['kept']} were kept")
    if quarantine_rows != counts["quarantined"]:
        problems.append(f"quarantine committed {quarantine_rows} rows but {counts['quarantined']} were quarantined")
    if problems:
        raise ReconciliationError("silver reconciliation failed: " + "; ".join(problems))


def event_dates() -> list[dt.date]:
    """The dates silver holds events of, in order (from the log, no data read)."""
    dates = (p["event_date"] for p in storage.partition_values(SILVER_EVENTS))
    return sorted(dt.date.fromisoformat(d) for d in dates if d)


def check_history_window(stage: str, as_of_date: dt.date, history_days: int) -> None:
    """Refuse a date whose history window holds none of silver's events: a mistyped date (2030 for 2019) rebuilt
    the knowledge graph without a behaviour edge, and computed and published gold with no user in it. A shop
    without events yet is fine."""
    dates = event_dates()
    first = as_of_date - dt.timedelta(days=history_days - 1)
    if dates and not any(first <= d <= as_of_date for d in dates):
        raise DataError(f"{stage} as of {as_of_date}: silver has no events in the {history_days} days up to it "
                        f"(it holds {dates[0]}..{dates[-1]}); nothing was written")  # fmt: skip


def dates_between(start: dt.date, end: dt.date) -> list[dt.date]:
    if end < start:
        raise ShoplakeError(f"end {end} is before start {start}")
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def main(argv: Sequence[str] | None = None) -> None:
    """spark-submit entry point: ``spark_jobs/silver.py --start D [--end D] --run-id R``."""
    from shoplake.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--end", type=dt.date.fromisoformat)
    parser.add_argument("--run-id", default="silver")
    args = parser.parse_args(argv)
    dates = dates_between(args.start, args.end or args.start)
    result = run_silver(get_spark("silver"), dates, run_id=args.run_id, processed_at=dt.datetime.now(dt.UTC))
    print(result)


if __name__ == "__main__":
    from shoplake.spark_submit import run_as_job

    run_as_job(main)
