"""Bronze: land behaviour-log files exactly as they came, with where every row came from.

A file is known by the SHA-256 of its bytes, so landing a file that is already in bronze does nothing. Every data
line becomes one row: the raw fields as strings, its source file, its line number in that file (the header is
line 1), the file checksum and the ingest run. A line with the wrong number of fields (a CSV line cut short or
run long; a JSON line that is no object) keeps its whole raw text, so silver can quarantine it without anything
being lost. Formats: CSV with a header, or JSON lines, where an absent key is an empty field; either may be
gzip-compressed.

Line numbers need no Python per row: within one file split Spark reads rows in order, so a row's line is the number
of lines in earlier splits of its file plus its position in its own split (from ``monotonically_increasing_id``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import hashlib
import json
import logging
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import BRONZE_EVENTS, RAW_EVENT_COLUMNS
from shoplake.errors import InputError, ShoplakeError
from shoplake.run_metrics import record_metrics
from shoplake.settings import get_settings
from spark_jobs.columns import csv_field_count, parse_event_time

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".json": "jsonl", ".jsonl": "jsonl", ".ndjson": "jsonl"}
EVENT_SUFFIXES = tuple(suffix + gz for suffix in FORMATS for gz in ("", ".gz"))  # what a folder scan picks up
EXPECTED_FIELDS = len(RAW_EVENT_COLUMNS)
MALFORMED = "_shoplake_malformed_line"  # the CSV parser's corrupt-record column


@dataclass(frozen=True)
class EventFile:
    path: str
    format: str  # "csv" | "jsonl"
    checksum: str
    header: tuple[str, ...] = ()  # CSV only, as written in the file


@dataclass(frozen=True)
class LandingResult:
    run_id: str
    checksums: tuple[str, ...]  # of every file given, landed now or before
    files_landed: tuple[str, ...]
    files_already_landed: tuple[str, ...]
    rows_landed: int
    version: int | None
    checksums_landed: tuple[str, ...] = ()  # of the files landed now


def file_format(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix):
            return kind
    raise InputError(f"{path}: not an events file; expected .csv or .json/.jsonl/.ndjson (optionally .gz)")


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8-sig") if path.endswith(".gz") else open(path, encoding="utf-8-sig")


def file_checksum(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_event_file(path: str) -> EventFile:
    """Check that a file exists and is CSV or JSON lines in the events schema, before any work is done."""
    kind = file_format(path)
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with _open_text(path) as handle:
            first = handle.readline().strip()
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise InputError(f"{path}: unreadable ({error})") from error
    if not first:
        raise InputError(f"{path}: empty file (a {kind} events file needs at least a header or one record)")
    if kind == "csv":
        header = tuple(h.strip().strip('"') for h in first.split(","))
        missing = [c for c in RAW_EVENT_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"{path}: not a CSV events file: header lacks {', '.join(missing)} (found {first[:200]!r})"
            )
        extra = [h for h in header if h not in RAW_EVENT_COLUMNS]
        if extra:
            log.warning(
                "%s: columns %s are not part of the events schema; bronze keeps only the known ones", path, extra
            )
        return EventFile(path, kind, file_checksum(path), header)
    try:
        if not isinstance(json.loads(first), dict):
            raise ValueError("not an object")
    except ValueError as error:
        raise InputError(f"{path}: not JSON lines: the first line is not a JSON object ({error})") from error
    return EventFile(path, kind, file_checksum(path))


def read_lines(spark: SparkSession, files: Sequence[EventFile]) -> DataFrame:
    """Every physical line of every file, in one scan: Spark packs small files into shared splits (a scan per file
    ran 60 tasks for 30 files, 3x slower). Each line has its file's URI, its split's offset and a per-split order."""
    return spark.read.text([f.path for f in files]).select(
        "value",
        F.col("_metadata.file_path").alias("file_uri"),
        F.col("_metadata.file_block_start").alias("block_start"),
        F.monotonically_increasing_id().alias("row_id"),
    )


@dataclass(frozen=True)
class Splits:
    """The splits Spark read: ``offsets`` per split (its file's index, and ``line_offset``, which turns a ``row_id``
    into a line number), and whether each split's dated lines all begin with one date."""

    offsets: DataFrame
    one_day_each: bool


def split_offsets(lines: DataFrame, files: Sequence[EventFile]) -> Splits:
    """One small job counts each split's lines; the driver adds up the lines of a file's earlier splits.

    The same job notes the first ten characters of each split's lines that begin with a digit (a CSV's leading
    event time; the header and JSON lines begin otherwise). When every split holds one such prefix — logs cut per
    day, as shops write them — each task's rows share their ``event_date`` (bar times with an offset across
    midnight, or unparseable ones), so bronze is written without rebalancing rows by date: the shuffle of every
    raw field was a fifth of landing ten million events."""
    value = F.col("value")
    day_prefix = F.when(F.substring(value, 1, 1).between("0", "9"), F.substring(value, 1, 10))
    splits = lines.groupBy("file_uri", "block_start").agg(
        F.count(F.lit(1)).alias("split_lines"), F.min("row_id").alias("first_row_id"),
        F.min(day_prefix).alias("first_day"), F.max(day_prefix).alias("last_day"),
    )  # fmt: skip
    index = {f.path: i for i, f in enumerate(files)}
    offsets, lines_before = [], dict.fromkeys(range(len(files)), 0)
    one_day_each = True
    for split in sorted(splits.collect(), key=lambda s: (s.file_uri, s.block_start)):
        path = urllib.parse.unquote(urllib.parse.urlsplit(split.file_uri).path)
        if path not in index:
            raise ShoplakeError(f"Spark read {split.file_uri}, which is none of the files being landed")
        file_index = index[path]
        line_offset = lines_before[file_index] - split.first_row_id + 1
        offsets.append((split.file_uri, split.block_start, file_index, line_offset))
        lines_before[file_index] += split.split_lines
        one_day_each = one_day_each and split.first_day is not None and split.first_day == split.last_day
    schema = "file_uri STRING, block_start LONG, file_index INT, line_offset LONG"
    return Splits(lines.sparkSession.createDataFrame(offsets, schema), one_day_each)


def transform_number_lines(lines: DataFrame, offsets: DataFrame) -> DataFrame:
    """Add ``file_index`` and ``line_number`` (1-based, per file): a split's rows come in file order."""
    return lines.join(F.broadcast(offsets), on=["file_uri", "block_start"], how="inner").select(
        "file_index", (F.col("row_id") + F.col("line_offset")).alias("line_number"), "value"
    )


def transform_csv_fields(numbered: DataFrame, header: Sequence[str]) -> DataFrame:
    """Split CSV lines into the raw event fields; the header (line 1) is not an event.

    The parser reports a line whose field count differs from the header's (``MALFORMED``). Only such lines, and
    those whose count it does not judge (empty, or holding a quote), are split again to count their fields:
    splitting every line cost a tenth of the parsing pass."""
    schema = ", ".join(f"`{name}` STRING" for name in (*header, MALFORMED))
    # RFC 4180 quoting, as Excel, pandas and PostgreSQL write it: a quote inside a quoted field is doubled
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": MALFORMED, "escape": '"'}
    parsed = F.from_csv("value", schema, options)
    value = F.col("value")
    recount = parsed[MALFORMED].isNotNull() | (value == "") | (F.instr(value, '"') > 0)
    field_count = F.when(recount, csv_field_count(value)).otherwise(len(header))
    return numbered.filter(F.col("line_number") > 1).select(
        "file_index", "line_number", "value",
        *(parsed[c].alias(c) for c in RAW_EVENT_COLUMNS),
        (field_count - (len(header) - EXPECTED_FIELDS)).alias("field_count"),
    )  # fmt: skip


def transform_jsonl_fields(numbered: DataFrame) -> DataFrame:
    """Read JSON objects' fields as strings. A key is found by its name, so an absent one cannot shift the others:
    it is an empty field, as ``,,`` is in CSV (JSON writers often leave nulls out), and the object has all
    ``EXPECTED_FIELDS``. A line that is no JSON object, or an object with none of the schema's keys, has 0 and
    keeps its raw text, for silver to quarantine."""
    schema = ", ".join(f"`{name}` STRING" for name in RAW_EVENT_COLUMNS)
    parsed = F.from_json("value", schema)
    keys = F.map_keys(F.from_json("value", "MAP<STRING, STRING>"))  # null when the line is no JSON object
    is_event = F.coalesce(F.exists(keys, lambda k: k.isin(*RAW_EVENT_COLUMNS)), F.lit(False))
    return numbered.select(
        "file_index", "line_number", "value",
        *(parsed[c].alias(c) for c in RAW_EVENT_COLUMNS),
        F.when(is_event, EXPECTED_FIELDS).otherwise(0).cast("int").alias("field_count"),
    )  # fmt: skip


@dataclass(frozen=True)
class EventTimeBounds:
    """The times bronze places on a day (silver quarantines the others): from midnight UTC of ``earliest_date`` up to
    ingestion plus ``future_tolerance_hours``."""

    earliest_date: dt.date
    future_tolerance_hours: float


def transform_bronze(
    fields: DataFrame,
    files: Sequence[EventFile],
    run_id: str,
    ingested_at: dt.datetime,
    time_bounds: EventTimeBounds,
) -> DataFrame:
    """The bronze schema: raw fields, the raw line when its field count is wrong, and provenance.

    ``event_date`` places a row on the day it happened; a time that does not parse, or lies beyond ingestion plus
    the tolerance or before the earliest date, places it nowhere (null), and every silver run examines such rows
    (a 1970-01-01 "no time" had silver process every date from 1970 on)."""
    by_index = F.col("file_index") + 1
    event_time = F.col("_event_time")  # parsed once in its own projection: the rules below read it twice
    earliest = F.lit(dt.datetime.combine(time_bounds.earliest_date, dt.time(), dt.UTC))
    latest = F.lit(ingested_at + dt.timedelta(hours=time_bounds.future_tolerance_hours)).cast("timestamp")
    plausible = event_time.between(earliest, latest)
    return fields.withColumn("_event_time", parse_event_time("event_time")).select(
        *RAW_EVENT_COLUMNS,
        "field_count",
        F.when(F.col("field_count") != EXPECTED_FIELDS, F.col("value")).alias("raw_line"),
        F.element_at(F.array(*(F.lit(f.path) for f in files)), by_index).alias("source_file"),
        F.col("line_number").cast("long").alias("line_number"),
        F.element_at(F.array(*(F.lit(f.checksum) for f in files)), by_index).alias("file_checksum"),
        F.lit(run_id).alias("ingest_run_id"),
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
        F.when(plausible, F.to_date(event_time)).alias("event_date"),
    )


def build_bronze(
    lines: DataFrame,
    splits: Splits,
    files: Sequence[EventFile],
    run_id: str,
    ingested_at: dt.datetime,
    time_bounds: EventTimeBounds,
) -> DataFrame:
    numbered = transform_number_lines(lines, splits.offsets)
    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for index, f in enumerate(files):
        groups.setdefault((f.format, f.header), []).append(index)
    parts = []
    for (kind, header), indices in groups.items():
        subset = numbered.filter(F.col("file_index").isin(indices))
        parts.append(transform_csv_fields(subset, header) if kind == "csv" else transform_jsonl_fields(subset))
    fields = parts[0]
    for part in parts[1:]:
        fields = fields.unionByName(part)
    return transform_bronze(fields, files, run_id, ingested_at, time_bounds)


def already_landed(spark: SparkSession, checksums: Sequence[str], version: int | None) -> set[str]:
    """The checksums bronze holds as of ``version`` (None: bronze has not been written yet)."""
    if version is None:
        return set()
    bronze = storage.read_table(spark, BRONZE_EVENTS, version)
    found = bronze.filter(F.col("file_checksum").isin(list(checksums))).select("file_checksum").distinct().collect()
    return {row.file_checksum for row in found}


def land_event_files(
    spark: SparkSession, paths: Sequence[str], *, run_id: str, ingested_at: dt.datetime
) -> LandingResult:
    """Append new files to bronze in one commit; files already landed (same checksum) are skipped."""
    if not paths:
        raise InputError("no events files given")
    with ThreadPoolExecutor(os.cpu_count() or 1) as checks:  # SHA-256 releases the GIL: the files hash in parallel
        files = list(checks.map(inspect_event_file, paths))
    unique = list({f.checksum: f for f in files}.values())
    checksums = tuple(f.checksum for f in unique)
    checked_at = storage.table_version(BRONZE_EVENTS)  # a run committing after this may land the same files
    landed = already_landed(spark, checksums, checked_at)
    new = [f for f in unique if f.checksum not in landed]
    skipped = tuple(f.path for f in files if f not in new)
    for path in skipped:
        log.info("%s: already landed (same checksum); skipped", path)
    if not new:
        return LandingResult(run_id, checksums, (), skipped, 0, storage.table_version(BRONZE_EVENTS))
    settings = get_settings()
    time_bounds = EventTimeBounds(settings.earliest_event_date, settings.future_tolerance_hours)
    with unreadable_file_as_input_error():
        lines = read_lines(spark, new)
        splits = split_offsets(lines, new)
        landed_rows = build_bronze(lines, splits, new, run_id, ingested_at, time_bounds)
        result = storage.write_table(landed_rows, BRONZE_EVENTS, "append", run_id=run_id, clustered=splits.one_day_each)
    rows, version = result.rows, result.version
    raced, withdrawn_rows = withdraw_raced_files(spark, new, run_id, checked_at)
    if raced:
        rows, version = rows - withdrawn_rows, storage.table_version(BRONZE_EVENTS) or version
        skipped += tuple(f.path for f in new if f.checksum in raced)
        new = [f for f in new if f.checksum not in raced]
    record_metrics(
        spark, run_id, "bronze",
        {"files_landed": len(new), "files_already_landed": len(skipped), "rows_landed": rows},
        recorded_at=ingested_at,
    )  # fmt: skip
    return LandingResult(
        run_id, checksums, tuple(f.path for f in new), skipped, rows, version, tuple(f.checksum for f in new)
    )


def withdraw_raced_files(
    spark: SparkSession, files: Sequence[EventFile], run_id: str, checked_at: int | None
) -> tuple[set[str], int]:
    """Checksums of this run's files that another run landed at the same time and committed first, and the rows
    taken back out.

    Two runs that land one file at once both find it new, and appends never conflict, so both commit it. After its
    commit each run reads the log since its check (``checked_at``, the version ``already_landed`` read);
    where other runs committed in between, it looks for its files among their rows and deletes its own rows of
    those files (one commit), and the files count as already landed. The first commit keeps them."""
    committed = storage.runs_committed_since(BRONZE_EVENTS, checked_at)
    mine = committed.get(run_id)  # None: nothing committed (no rows), or Spark's Delta connector kept no run id
    earlier = [] if mine is None else sorted(run for run, version in committed.items() if version < mine)
    if not earlier:  # the usual case: nobody committed between this run's check and its commit
        return set(), 0
    # read by Spark, as already_landed reads: deltalake's Arrow dataset finds nothing by file_checksum in files
    # written before long strings had bounds in their statistics
    theirs = F.col("file_checksum").isin([f.checksum for f in files]) & F.col("ingest_run_id").isin(earlier)
    found = storage.read_table(spark, BRONZE_EVENTS).filter(theirs).select("file_checksum").distinct().collect()
    raced = {row.file_checksum for row in found}
    if not raced:
        return set(), 0
    listed = ", ".join(f"'{c}'" for c in sorted(raced))
    predicate = f"ingest_run_id = '{run_id.replace(chr(39), chr(39) * 2)}' AND file_checksum IN ({listed})"
    deleted = storage.retry_conflicts(lambda: storage.delete_rows(BRONZE_EVENTS, predicate, run_id))
    for f in files:
        if f.checksum in raced:
            log.warning("%s: landed at the same time by another run, which committed first; this run's rows of it "
                        "were taken back out", f.path)  # fmt: skip
    return raced, deleted


@contextlib.contextmanager
def unreadable_file_as_input_error() -> Iterator[None]:
    """A file Spark cannot read to its end (a truncated or corrupt .gz: its first line reads fine) becomes an
    ``InputError`` naming it, rather than a Java stack trace; nothing was committed, the write never began."""
    try:
        yield
    except Exception as error:
        text = str(error)
        failed = re.search(r"FAILED_READ_FILE\S* Encountered error while reading file (\S+?)\.?\s", text)
        if failed is None:
            raise
        path = urllib.parse.unquote(urllib.parse.urlsplit(failed.group(1)).path)
        causes = re.findall(r"Caused by: ([^\n]+)", text)
        reason = causes[-1].strip() if causes else "Spark could not read it"
        raise InputError(f"{path}: unreadable ({reason}); nothing was landed") from error


def event_dates(spark: SparkSession, checksums: Sequence[str]) -> list[dt.date]:
    """The event dates the given files hold: the silver partitions to rebuild after landing them."""
    bronze = storage.read_table(spark, BRONZE_EVENTS).filter(F.col("file_checksum").isin(list(checksums)))
    rows = bronze.filter(F.col("event_date").isNotNull()).select("event_date").distinct().collect()
    return sorted(row.event_date for row in rows)


def new_run_id(stage: str) -> str:
    return f"{stage}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def main(argv: Sequence[str] | None = None) -> None:
    """spark-submit entry point: ``spark_jobs/bronze.py --run-id R FILE...``."""
    from shoplake.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args(argv)
    run_id = args.run_id or new_run_id("ingest")
    result = land_event_files(get_spark("bronze"), args.paths, run_id=run_id, ingested_at=dt.datetime.now(dt.UTC))
    print(json.dumps(result.__dict__, default=str))


if __name__ == "__main__":
    from shoplake.spark_submit import run_as_job

    run_as_job(main)
