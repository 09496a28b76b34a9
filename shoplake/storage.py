"""Delta tables for Spark without Delta's Spark connector.

Spark computes; delta-rs owns the transaction log. A write goes:

1. Spark writes hive-layout Parquet into a private staging folder of the lake (executors do the I/O);
2. the files are moved into the table folder (a rename on a local or shared file system);
3. one delta-rs transaction commits them, with statistics read from the Parquet footers.

Readers only ever see files named in the log, so a write that fails before step 3 leaves the previous version
intact; its orphans are removed at once, or by ``vacuum_table``. Nothing passes through the driver's Python memory.
Merges stage the same way and stream the staged files into delta-rs's MERGE, which runs in Rust.

Where Delta's Spark connector is on the classpath (a cluster that can reach Maven), the same calls use it instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFound
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions

from shoplake.catalog import TableSpec, get_table
from shoplake.errors import SchemaMismatchError, ShoplakeError, TableNotFoundError, WriteConflictError
from shoplake.settings import Settings, get_settings, is_remote_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql import types as T

log = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite", "overwrite_partitions", "merge"]
Written = TypeVar("Written")
WRITE_MODES: tuple[str, ...] = ("append", "overwrite", "overwrite_partitions", "merge")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
MAX_STAT_STRING = 32  # longer strings get truncated bounds (_stat_value)


@dataclass(frozen=True)
class WriteResult:
    table: str
    version: int
    rows: int  # rows this write committed (for a merge: rows in the source)
    files: int


@dataclass(frozen=True)
class TableInfo:
    name: str
    uri: str
    version: int
    rows: int
    files: int
    size_bytes: int


# ---------------------------------------------------------------------------------------------------- locations


def table_uri(table: str | TableSpec, settings: Settings | None = None) -> str:
    return (settings or get_settings()).table_uri(get_table(table).name)


def _spark_path(uri: str) -> str:
    """Hadoop names S3 ``s3a``; delta-rs and Arrow name it ``s3``."""
    return "s3a://" + uri[len("s3://") :] if uri.startswith("s3://") else uri


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if is_remote_uri(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri.removeprefix("file://")


def _open(uri: str, settings: Settings, version: int | None = None) -> DeltaTable | None:
    try:
        return DeltaTable(uri, version=version, storage_options=settings.storage_options or None)
    except DeltaTableNotFound:
        return None


def _snapshot(spec: TableSpec, version: int | None = None) -> DeltaTable | None:
    """The table's latest snapshot, or ``version``'s; None when the table has never been written."""
    settings = get_settings()
    return _open(settings.table_uri(spec.name), settings, version)


def _written_snapshot(spec: TableSpec, version: int | None = None) -> DeltaTable:
    """``_snapshot``, for what needs the table to exist."""
    delta = _snapshot(spec, version)
    if delta is None:
        raise TableNotFoundError(f"table {spec.name} has not been written yet")
    return delta


def delta_connector_active(spark: SparkSession) -> bool:
    """True when the session was built with Delta's Spark connector (io.delta.sql.DeltaSparkSessionExtension)."""
    return "DeltaSparkSessionExtension" in (spark.conf.get("spark.sql.extensions", "") or "")


# ---------------------------------------------------------------------------------------------------- schema


def _type_name(data_type: T.DataType) -> str:
    return data_type.simpleString()  # ignores nullability, which Spark cannot always prove


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Select the table's columns in catalogue order, or fail naming the table and the first offending column."""
    actual = {f.name: f.dataType for f in df.schema.fields}
    for expected in spec.schema.fields:
        if expected.name not in actual:
            raise SchemaMismatchError(f"table {spec.name}: column {expected.name!r} is missing from the data")
        if _type_name(actual[expected.name]) != _type_name(expected.dataType):
            raise SchemaMismatchError(
                f"table {spec.name}: column {expected.name!r} has type {_type_name(actual[expected.name])}, "
                f"expected {_type_name(expected.dataType)}"
            )
    extra = [name for name in actual if name not in spec.columns]
    if extra:
        raise SchemaMismatchError(f"table {spec.name}: column {extra[0]!r} is not in the table's schema")
    return df.select(*spec.columns)


def arrow_schema(spec: TableSpec) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(spec.schema, timestamp_utc=True)


# ---------------------------------------------------------------------------------------------------- reading


def read_table(spark: SparkSession, table: str | TableSpec, version: int | None = None) -> DataFrame:
    """A snapshot of a table as a Spark DataFrame: the latest version, or ``version`` (time travel)."""
    settings = get_settings()
    spec = get_table(table)
    uri = settings.table_uri(spec.name)
    if delta_connector_active(spark):
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(_spark_path(uri)).select(*spec.columns)
    delta = _open(uri, settings, version)
    if delta is None:
        raise TableNotFoundError(f"table {spec.name} has not been written yet (no Delta log at {uri})")
    files = delta.file_uris()
    if not files:
        return spark.createDataFrame([], spec.schema)
    return (
        spark.read.schema(spec.schema)
        .option("basePath", _spark_path(uri))
        .parquet(*(_spark_path(unquote(f)) for f in files))  # delta-rs escapes them (a space: %20)
        .select(*spec.columns)
    )


def read_arrow(
    table: str | TableSpec, columns: Sequence[str], version: int | None = None, where: pc.Expression | None = None
) -> pa.Table:
    """Columns of a table's snapshot as Arrow, read on this machine by ``deltalake`` (no Spark job): for writers
    that run on the driver anyway, such as publishing to an online store. Only the rows ``where`` holds are read:
    files whose partition values or statistics rule them out are skipped."""
    delta = _written_snapshot(get_table(table), version)
    return delta.to_pyarrow_dataset().to_table(columns=list(columns), filter=where)


def table_version(table: str | TableSpec) -> int | None:
    """The latest committed version, or None when the table has never been written."""
    delta = _snapshot(get_table(table))
    return None if delta is None else delta.version()


def restore_table(table: str | TableSpec, version: int) -> int:
    """Make ``version``'s contents the latest again (a new commit; later versions stay in the history)."""
    spec = get_table(table)
    delta, target = _written_snapshot(spec), _written_snapshot(spec, version)
    if set(target.file_uris()) == set(delta.file_uris()):
        return delta.version()  # already those contents: nothing to commit
    delta.restore(version)
    delta.update_incremental()
    return delta.version()


def partition_values(table: str | TableSpec) -> list[dict[str, str | None]]:
    """The distinct partitions of the latest version, read from the log (no data is scanned)."""
    spec = get_table(table)
    latest = _latest_files(spec)
    if latest is None or not spec.partition_by:
        return []
    _, actions = latest
    columns = [actions[f"partition.{c}"] for c in spec.partition_by]
    rows = {tuple(None if v is None else str(v) for v in values) for values in zip(*columns, strict=True)}
    return [dict(zip(spec.partition_by, row, strict=True)) for row in sorted(rows, key=str)]


def _latest_files(spec: TableSpec) -> tuple[DeltaTable, dict[str, list[Any]]] | None:
    """The latest snapshot and its data files' add actions (path, size, records, partition values), column-wise."""
    delta = _snapshot(spec)
    if delta is None:
        return None
    return delta, pa.table(delta.get_add_actions(flatten=True)).to_pydict()


def table_info(table: str | TableSpec) -> TableInfo | None:
    spec = get_table(table)
    latest = _latest_files(spec)
    if latest is None:
        return None
    delta, actions = latest
    rows = sum(n or 0 for n in actions.get("num_records", []))
    size = sum(actions.get("size_bytes", []))
    return TableInfo(
        spec.name, get_settings().table_uri(spec.name), delta.version(), rows, len(actions.get("path", [])), size
    )


# ---------------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _StagedFile:
    relative_path: str  # e.g. "event_date=2019-10-01/part-00000-<uuid>.c000.snappy.parquet"
    size: int
    partition_values: dict[str, str | None]
    rows: int
    stats: str


def write_table(
    df: DataFrame,
    table: str | TableSpec,
    mode: WriteMode = "append",
    *,
    partitions: Sequence[Mapping[str, Any]] | None = None,
    keys: Sequence[str] | None = None,
    run_id: str | None = None,
    clustered: bool = False,
) -> WriteResult:
    """Write ``df`` to a table as one atomic Delta commit and say what was committed.

    - ``append`` adds rows; ``overwrite`` replaces the table;
    - ``overwrite_partitions`` replaces the given ``partitions`` (default: those present in ``df``), so rerunning a
      date replaces exactly that date, even when it now has no rows;
    - ``merge`` upserts on ``keys`` (default: the table's keys); merging the same rows twice changes nothing.

    ``clustered`` (not for ``merge``): each of ``df``'s partitions already holds few values of the table's partition
    columns (one date per task, say), so Spark writes them as they are, without the shuffle that rebalances them.
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"unknown write mode {mode!r}; expected one of {', '.join(WRITE_MODES)}")
    settings = get_settings()
    spec = get_table(table)
    df = conform(df, spec)
    uri = settings.table_uri(spec.name)
    metadata = {"shoplake.mode": mode, "shoplake.run_id": run_id or ""}
    if delta_connector_active(df.sparkSession):
        return _write_with_connector(df, spec, uri, mode, partitions, keys)
    snapshot = _open(uri, settings)  # taken before any work: a commit landing after it is a conflict to detect
    if mode == "merge":
        return _merge(df, spec, uri, snapshot, keys or spec.keys, metadata, settings)
    staged_dir = _stage_name(settings, spec)
    files = _stage(df, spec, staged_dir, rebalance=not clustered)
    return _move_and_commit(staged_dir, files, spec, uri, snapshot, mode, partitions, metadata, settings)


def merge_table(df: DataFrame, table: str | TableSpec, keys: Sequence[str] | None = None, **kwargs: Any) -> WriteResult:
    """Upsert ``df`` into a table on ``keys``; shorthand for ``write_table(df, table, "merge", keys=keys)``."""
    return write_table(df, table, "merge", keys=keys, **kwargs)


def _stage_name(settings: Settings, spec: TableSpec) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{settings.staging_root}/{spec.name}/{stamp}-{uuid.uuid4().hex[:12]}"


def _by_partition(df: DataFrame, spec: TableSpec) -> DataFrame:
    """``df`` rebalanced on the table's partition columns, for a partitioned write.

    Without it every task writes a file into every partition it holds: 16 tasks × 30 dates = 480 small files, and
    each later scan pays per file (a gold run reads silver ten times). Rebalancing lets adaptive execution write few
    files per partition value, splitting only values larger than its advisory size."""
    return df.hint("rebalance", *spec.partition_by) if spec.partition_by else df


def _stage(df: DataFrame, spec: TableSpec, staged_dir: str, *, rebalance: bool) -> list[_StagedFile]:
    """Let Spark's executors write the Parquet files; return what they wrote, with Delta statistics."""
    if spec.partition_by:
        writer = (_by_partition(df, spec) if rebalance else df).write.mode("error").partitionBy(*spec.partition_by)
    else:
        writer = df.write.mode("error")
    try:
        writer.parquet(_spark_path(staged_dir))
    except BaseException:
        _delete_dir(staged_dir)
        raise
    fs, base = _filesystem(staged_dir)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    staged = []
    for info in infos:
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        relative = info.path[len(base.rstrip("/")) + 1 :]
        metadata = pq.read_metadata(info.path, filesystem=fs)
        staged.append(
            _StagedFile(
                relative_path=relative,
                size=info.size,
                partition_values=_partition_values(relative),
                rows=metadata.num_rows,
                stats=_stats_json(metadata),
            )
        )
    return staged


def _partition_values(relative_path: str) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for part in relative_path.split("/")[:-1]:
        key, _, value = part.partition("=")
        values[unquote(key)] = None if value == HIVE_NULL else unquote(value)
    return values


def _stat_value(value: Any, upper: bool = False) -> Any:
    """A footer's min (or, ``upper``, max) as Delta statistics write it; None where no bound can be given."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value != value:  # NaN makes min/max meaningless
        return None
    if isinstance(value, str) and len(value) > MAX_STAT_STRING:
        # truncated as Delta's Spark writer does: the prefix bounds every longer string that begins with it from
        # below, and the prefix followed by the last code point from above
        return value[:MAX_STAT_STRING] + ("\U0010ffff" if upper else "")
    if isinstance(value, bytes | bool):
        return None
    return value


def _stats_json(metadata: pq.FileMetaData) -> str:
    """Delta file statistics (numRecords, nullCount, min/max of top-level primitive columns) from the footer."""
    null_count: dict[str, int] = {}
    minimum: dict[str, Any] = {}
    maximum: dict[str, Any] = {}
    arrow = metadata.schema.to_arrow_schema()
    for index, name in enumerate(arrow.names):
        if pa.types.is_nested(arrow.field(name).type):
            continue
        nulls, lows, highs, complete = 0, [], [], True
        for group in range(metadata.num_row_groups):
            statistics = metadata.row_group(group).column(index).statistics
            if statistics is None:
                complete = False
                break
            if statistics.has_null_count:
                nulls += statistics.null_count
            else:
                complete = False
            if statistics.has_min_max:
                lows.append(_stat_value(statistics.min))
                highs.append(_stat_value(statistics.max, upper=True))
            elif statistics.num_values > 0:
                lows.append(None)
        if not complete:
            continue
        null_count[name] = nulls
        if lows and None not in lows and None not in highs:
            minimum[name], maximum[name] = min(lows), max(highs)
    return json.dumps(
        {"numRecords": metadata.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": null_count}
    )


def _move_into_table(staged_dir: str, uri: str, files: list[_StagedFile]) -> list[_StagedFile]:
    """Move staged files under the table root (a rename on one file system), then drop the staging folder."""
    fs, staged_base = _filesystem(staged_dir)
    _, table_base = _filesystem(uri)
    moved: list[_StagedFile] = []
    try:
        for file in files:
            if file.rows == 0:
                continue  # Spark writes an empty file for an empty unpartitioned frame; it adds nothing
            target = f"{table_base}/{file.relative_path}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            fs.move(f"{staged_base}/{file.relative_path}", target)
            moved.append(file)
    except BaseException:
        _delete_files(uri, [f.relative_path for f in moved])
        raise
    finally:
        _delete_dir(staged_dir)
    return moved


def _move_and_commit(
    staged_dir: str,
    files: list[_StagedFile],
    spec: TableSpec,
    uri: str,
    snapshot: DeltaTable | None,
    mode: str,
    partitions: Sequence[Mapping[str, Any]] | None,
    metadata: dict[str, str],
    settings: Settings,
) -> WriteResult:
    """Move the staged files into the table and commit them; if the commit fails, remove them again."""
    moved = _move_into_table(staged_dir, uri, files)
    try:
        return _commit(spec, uri, snapshot, moved, mode, partitions, metadata, settings)
    except BaseException:
        _delete_files(uri, [f.relative_path for f in moved])
        raise


def _partition_filter(spec: TableSpec, partitions: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, Any]]:
    """The ``column IN (values)`` filter that delta-rs's overwrite takes (one partition column, no nulls)."""
    if len(spec.partition_by) != 1:
        raise ValueError(f"table {spec.name}: overwrite_partitions needs exactly one partition column")
    (column,) = spec.partition_by
    values = []
    for partition in partitions:
        if set(partition) != {column}:
            raise ValueError(f"table {spec.name}: partitions must name exactly [{column!r}], got {dict(partition)}")
        if partition[column] is None:
            raise ValueError(f"table {spec.name}: the null partition of {column} cannot be replaced; use merge")
        values.append(_partition_string(partition[column]))
    return [(column, "in", sorted(set(values)))]


def _partition_string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)


def _commit(
    spec: TableSpec,
    uri: str,
    snapshot: DeltaTable | None,
    files: list[_StagedFile],
    mode: str,
    partitions: Sequence[Mapping[str, Any]] | None,
    metadata: dict[str, str],
    settings: Settings,
) -> WriteResult:
    now_ms = int(time.time() * 1000)
    adds = [AddAction(f.relative_path, f.size, f.partition_values, now_ms, True, f.stats) for f in files]
    actions: list[AddAction | RemoveAction] = list(adds)
    schema = DeltaSchema.from_arrow(arrow_schema(spec))
    partition_by = list(spec.partition_by) or None
    properties = CommitProperties(custom_metadata=metadata)
    try:
        if snapshot is None:
            if mode == "overwrite_partitions" and not actions:
                log.info("table %s: nothing to write and no table yet; creating it empty", spec.name)
            create_table_with_add_actions(
                uri, schema, adds, mode="error", partition_by=partition_by,
                storage_options=settings.storage_options or None, commit_properties=properties,
            )  # fmt: skip
        elif mode == "append":
            snapshot.create_write_transaction(actions, "append", schema, partition_by, commit_properties=properties)
        elif mode == "overwrite":
            snapshot.create_write_transaction(actions, "overwrite", schema, partition_by, commit_properties=properties)
        else:  # overwrite_partitions
            if not spec.partition_by:
                raise ValueError(f"table {spec.name} is not partitioned; use mode='overwrite'")
            targets = list(partitions) if partitions is not None else _distinct(f.partition_values for f in files)
            if not targets:
                log.info("table %s: no partitions to replace; version unchanged", spec.name)
                return WriteResult(spec.name, snapshot.version(), 0, 0)
            covered = {tuple(sorted(f.partition_values.items())) for f in files}
            wanted = {tuple(sorted((k, _partition_string(v)) for k, v in p.items())) for p in targets}
            if not covered <= wanted:
                raise ValueError(f"table {spec.name}: data has rows outside the partitions to replace {targets}")
            snapshot.create_write_transaction(
                actions, "overwrite", schema, partition_by,
                partition_filters=_partition_filter(spec, targets),  # type: ignore[arg-type]
                commit_properties=properties,
            )  # fmt: skip
    except CommitFailedError as error:
        raise WriteConflictError(
            f"table {spec.name}: another writer committed first; retry the write ({error})"
        ) from error
    except DeltaError as error:
        if snapshot is None and "already exists" in str(error).lower():
            raise WriteConflictError(f"table {spec.name}: created by another writer at the same time; retry") from error
        raise
    version = DeltaTable(uri, storage_options=settings.storage_options or None).version()
    rows = sum(f.rows for f in files)
    log.info("table %s: %s committed version %d (%d rows, %d files)", spec.name, mode, version, rows, len(actions))
    return WriteResult(spec.name, version, rows, len(actions))


def _distinct(values: Iterable[dict[str, str | None]]) -> list[dict[str, str | None]]:
    seen: dict[tuple[tuple[str, str | None], ...], dict[str, str | None]] = {}
    for value in values:
        seen.setdefault(tuple(sorted(value.items())), value)
    return list(seen.values())


def _merge(
    df: DataFrame,
    spec: TableSpec,
    uri: str,
    snapshot: DeltaTable | None,
    keys: Sequence[str],
    metadata: dict[str, str],
    settings: Settings,
) -> WriteResult:
    """Upsert through delta-rs: matched rows are updated, the rest inserted, in one commit."""
    missing = [k for k in keys if k not in spec.columns]
    if missing:
        raise SchemaMismatchError(f"table {spec.name}: merge key {missing[0]!r} is not a column")
    staged_dir = _stage_name(settings, spec)
    files = _stage(df, spec, staged_dir, rebalance=True)
    if snapshot is None:  # nothing to merge into yet: the upsert is a plain create
        return _move_and_commit(staged_dir, files, spec, uri, None, "overwrite", None, metadata, settings)
    try:
        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        touched = _distinct(f.partition_values for f in files if f.rows)
        prunable = [c for c in spec.partition_by if c in keys]  # a matching row can only be in the same partition
        if prunable and touched and all(p[prunable[0]] is not None for p in touched):
            column = prunable[0]  # scan only the target partitions the source touches
            listed = ", ".join(f"'{p[column]}'" for p in touched)
            predicate += f" AND t.`{column}` IN ({listed})"
        source = _staged_reader(staged_dir, spec)
        result = (
            snapshot.merge(source, predicate, source_alias="s", target_alias="t", commit_properties=CommitProperties(custom_metadata=metadata))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )  # fmt: skip
        log.info("table %s: merge %s", spec.name, result)
    except CommitFailedError as error:
        raise WriteConflictError(
            f"table {spec.name}: another writer committed first; retry the merge ({error})"
        ) from error
    finally:
        _delete_dir(staged_dir)
    version = DeltaTable(uri, storage_options=settings.storage_options or None).version()
    return WriteResult(spec.name, version, sum(f.rows for f in files), len(files))


def _staged_reader(staged_dir: str, spec: TableSpec) -> pa.RecordBatchReader:
    """Stream the staged files as Arrow batches, partition columns restored from the folder names."""
    schema = arrow_schema(spec)
    fs, base = _filesystem(staged_dir)
    partitioning = None
    if spec.partition_by:
        partition_schema = pa.schema([schema.field(c) for c in spec.partition_by])
        partitioning = pads.HivePartitioning(partition_schema, null_fallback=HIVE_NULL)
    dataset = pads.dataset(base, filesystem=fs, format="parquet", partitioning=partitioning, schema=schema)
    return dataset.scanner(batch_size=65_536).to_reader()


def _write_with_connector(
    df: DataFrame,
    spec: TableSpec,
    uri: str,
    mode: str,
    partitions: Sequence[Mapping[str, Any]] | None,
    keys: Sequence[str] | None,
) -> WriteResult:
    """The cluster branch: Delta's own Spark connector does the same four operations."""
    from delta.tables import DeltaTable as SparkDeltaTable

    spark, path = df.sparkSession, _spark_path(uri)
    exists = SparkDeltaTable.isDeltaTable(spark, path)
    if mode == "merge" and exists:
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys or spec.keys)
        target = SparkDeltaTable.forPath(spark, path).alias("t")
        target.merge(df.alias("s"), condition).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
    else:
        writer = _by_partition(df, spec).write.format("delta").partitionBy(*spec.partition_by)
        if mode == "overwrite_partitions" and exists:
            targets = list(partitions) if partitions is not None else [
                row.asDict() for row in df.select(*spec.partition_by).distinct().collect()
            ]  # fmt: skip
            if not targets:
                return WriteResult(spec.name, int(_last_commit(spark, path)["version"]), 0, 0)
            where = " OR ".join(
                "(" + " AND ".join(f"`{c}` = '{_partition_string(p[c])}'" for c in spec.partition_by) + ")"
                for p in targets
            )
            writer = writer.mode("overwrite").option("replaceWhere", where)
        else:
            writer = writer.mode("append" if mode == "append" else "overwrite")
        writer.save(path)
    last = _last_commit(spark, path)
    metrics = last["operationMetrics"] or {}
    rows = int(metrics.get("numOutputRows") or metrics.get("numSourceRows") or 0)
    return WriteResult(spec.name, int(last["version"]), rows, int(metrics.get("numFiles") or 0))


def _last_commit(spark: SparkSession, path: str) -> Any:
    from delta.tables import DeltaTable as SparkDeltaTable

    last = SparkDeltaTable.forPath(spark, path).history(1).first()
    assert last is not None, f"{path}: a Delta table without history"
    return last


# ---------------------------------------------------------------------------------------------------- upkeep


def _delete_dir(uri: str) -> None:
    fs, base = _filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(base)


def _delete_files(uri: str, relative_paths: Iterable[str]) -> None:
    fs, base = _filesystem(uri)
    for relative in relative_paths:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{base}/{relative}")


def vacuum_table(table: str | TableSpec, retention_hours: int = 168, dry_run: bool = False) -> list[str]:
    """Delete files no version within ``retention_hours`` needs, and staging left by crashed writers."""
    settings = get_settings()
    spec = get_table(table)
    delta = _written_snapshot(spec)
    removed = delta.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False)
    fs, staging = _filesystem(f"{settings.staging_root}/{spec.name}")
    cutoff = time.time() - retention_hours * 3600
    try:
        for info in fs.get_file_info(pafs.FileSelector(staging)):
            if info.type == pafs.FileType.Directory and info.mtime is not None and info.mtime.timestamp() < cutoff:
                removed.append(info.path)
                if not dry_run:
                    fs.delete_dir(info.path)
    except FileNotFoundError:
        pass
    return removed


def files_still_current(table: str | TableSpec, version: int) -> bool:
    """Whether the latest version still holds every data file of ``version`` (so no vacuum can remove them)."""
    spec = get_table(table)
    latest, old = _written_snapshot(spec), _written_snapshot(spec, version)
    return set(old.file_uris()) <= set(latest.file_uris())


def retry_conflicts(write: Callable[[], Written], attempts: int = 5) -> Written:
    """Run ``write`` again, from a fresh snapshot, while another writer commits first (``WriteConflictError``):
    for the bookkeeping writes that runs at the same time all make, whose conflict is only their timing."""
    for attempt in range(attempts - 1):
        try:
            return write()
        except WriteConflictError as error:
            log.info("%s; writing again (attempt %d of %d)", error, attempt + 2, attempts)
            time.sleep(0.2 * 2**attempt)
    return write()


def runs_committed_since(table: str | TableSpec, version: int | None) -> dict[str, int]:
    """The runs that committed to ``table`` after ``version`` (None: since its creation), each with the version of
    its first such commit: which of two runs writing at once committed first. Writes without a run id are left
    out."""
    delta = _snapshot(get_table(table))
    if delta is None:
        return {}
    after = -1 if version is None else version  # versions start at 0
    found: dict[str, int] = {}
    for commit in delta.history(delta.version() - after):  # newest first
        if commit["version"] > after and commit.get("shoplake.run_id"):  # "": a write without a run id
            found[commit["shoplake.run_id"]] = commit["version"]  # a run's earlier commit replaces its later one
    return found


def delete_rows(table: str | TableSpec, predicate: str, run_id: str) -> int:
    """Delete the rows matching a SQL ``predicate`` in one commit; the number deleted."""
    spec = get_table(table)
    delta = _written_snapshot(spec)
    metadata = {"shoplake.mode": "delete", "shoplake.run_id": run_id}
    try:
        result = delta.delete(predicate, commit_properties=CommitProperties(custom_metadata=metadata))
    except CommitFailedError as error:
        raise WriteConflictError(
            f"table {spec.name}: another writer committed first; retry the delete ({error})"
        ) from error
    log.info("table %s: deleted %s", spec.name, result)
    return int(result.get("num_deleted_rows", 0))


def committed_at(table: str | TableSpec, version: int) -> dt.datetime:
    """When ``version`` of ``table`` was committed (UTC)."""
    spec = get_table(table)
    delta = _written_snapshot(spec)
    for commit in delta.history(delta.version() - version + 1):
        if commit.get("version") == version:
            return dt.datetime.fromtimestamp(commit["timestamp"] / 1000, dt.UTC)
    raise ShoplakeError(f"table {spec.name} has no version {version} in its log")


def optimize_table(table: str | TableSpec, target_size: int | None = None) -> dict[str, Any]:
    """Compact small files into larger ones (a new version; readers of older versions are unaffected)."""
    delta = _written_snapshot(get_table(table))
    metrics: dict[str, Any] = delta.optimize.compact(target_size=target_size)
    delta.create_checkpoint()
    return metrics
