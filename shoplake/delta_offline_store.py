"""Feast's file (dask) offline store, reading a Delta source as Delta: the files of the table's current snapshot.

Feast 0.67's dask store reads every ``FileSource`` with ``dd.read_parquet(path)``, whatever its format, so on a
Delta table it reads every Parquet file in the folder: also the files an overwrite, a failed quality gate or a trial
replaced, which only the Delta log says are gone. Materialization and point-in-time joins then saw stale and
rejected rows (a lake whose latest date was rerun: 15,818 user feature rows where the snapshot holds 4,504), and
the newest ``created_timestamp`` among them, a failed or sampled run's, could win. This store, configured as the
local offline store, is Feast's dask store with its read changed: a ``DeltaFormat`` source is read as its
snapshot with ``deltalake`` (partition columns included), any other source as Feast reads it. The read is a module
function of Feast's store, so importing this module (as Feast does to load the store) installs it for the process.

Feast's store reads a whole source and only then keeps the rows it needs, so a materialization or a training set
read every gold date the lake ever held, and its cost grew with the shop's history. This store tells the read what
Feast will keep: materializing a window reads only that window's rows and the view's columns; a training set reads
only the rows its entity times can see (from the earliest time less the view's TTL to the latest time).
``deltalake`` skips the files whose partition values or statistics lie outside (a gold date is a partition), and
Feast's own filters still apply to what is read, so the answer is the same. (``shoplake publish`` writes through
``online_writer``, which reads its windows itself; Feast's materialization here serves ``feast materialize`` and
views that writer does not take.)
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from feast.data_format import DeltaFormat
from feast.infra.offline_stores import dask as feast_dask
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df

from shoplake.settings import get_settings

STORE_TYPE = "shoplake.delta_offline_store.DeltaFileOfflineStore"


class DeltaFileOfflineStoreConfig(DaskOfflineStoreConfig):
    """Feast's dask settings, as they are."""

    type: Literal["shoplake.delta_offline_store.DeltaFileOfflineStore"] = STORE_TYPE  # type: ignore[assignment]


@dataclass(frozen=True)
class SourceRead:
    """What a job will keep of a source: rows whose ``time`` lies in [since, until] (an open end: None), and
    ``columns`` (None: all)."""

    time: str
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    columns: frozenset[str] | None = None

    def widened(self, other: SourceRead) -> SourceRead:
        """Both reads' rows and columns (two views of one source in a job)."""
        if other.time != self.time:
            return SourceRead(self.time)
        since = None if self.since is None or other.since is None else min(self.since, other.since)
        until = None if self.until is None or other.until is None else max(self.until, other.until)
        columns = None if self.columns is None or other.columns is None else self.columns | other.columns
        return SourceRead(self.time, since, until, columns)

    def filter(self, schema: pa.Schema) -> pc.Expression | None:
        """The rows' condition in the table's own time type (a finer entity time is truncated: Delta keeps µs)."""
        kind, time = schema.field(self.time).type, pc.field(self.time)
        bounds = []
        if self.since is not None:
            bounds.append(time >= pa.scalar(self.since).cast(kind, safe=False))
        if self.until is not None:
            bounds.append(time <= pa.scalar(self.until).cast(kind, safe=False))
        return functools.reduce(operator.and_, bounds) if bounds else None


_reads: contextvars.ContextVar[Mapping[str, SourceRead] | None] = contextvars.ContextVar("source_reads", default=None)


class DeltaFileOfflineStore(DaskOfflineStore):
    """Feast's dask offline store; its source read is ``read_source`` (installed below), told what each job keeps."""

    @staticmethod
    def pull_latest_from_table_or_query(  # type: ignore[override]
        config: Any,
        data_source: Any,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: dt.datetime | None = None,
        end_date: dt.datetime | None = None,
    ) -> RetrievalJob:
        return _windowed(DaskOfflineStore.pull_latest_from_table_or_query, config, data_source, join_key_columns,
                         feature_name_columns, timestamp_field, created_timestamp_column, start_date, end_date)  # fmt: skip

    @staticmethod
    def pull_all_from_table_or_query(  # type: ignore[override]
        config: Any,
        data_source: Any,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: dt.datetime | None = None,
        end_date: dt.datetime | None = None,
    ) -> RetrievalJob:
        """What Feast's local materialization reads (then keeps each entity's latest row itself)."""
        return _windowed(DaskOfflineStore.pull_all_from_table_or_query, config, data_source, join_key_columns,
                         feature_name_columns, timestamp_field, created_timestamp_column, start_date, end_date)  # fmt: skip

    @staticmethod
    def get_historical_features(  # type: ignore[override]
        config: Any,
        feature_views: list[Any],
        feature_refs: list[str],
        entity_df: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs: Any,
    ) -> RetrievalJob:
        job = DaskOfflineStore.get_historical_features(
            config, feature_views, feature_refs, entity_df, registry, project, full_feature_names,
            filter_by_created_timestamp, **kwargs,
        )  # fmt: skip
        return _reading(job, historical_reads(feature_views, entity_df))


def _windowed(
    pull: Callable[..., RetrievalJob],
    config: Any,
    source: Any,
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    created_timestamp_column: str | None,
    start_date: dt.datetime | None,
    end_date: dt.datetime | None,
) -> RetrievalJob:
    """Feast's ``pull``, reading only the window's rows (Feast keeps [start, end]) and, where it names features,
    the columns it keeps."""
    job = pull(config, source, join_key_columns, feature_name_columns, timestamp_field, created_timestamp_column,
               start_date, end_date)  # fmt: skip
    columns = {*join_key_columns, *feature_name_columns, timestamp_field, created_timestamp_column or ""} - {""}
    kept = _projectable(source, columns) if feature_name_columns else None  # no features named: Feast keeps all
    return _reading(job, {source.name: SourceRead(timestamp_field, start_date, end_date, kept)})


def historical_reads(feature_views: Iterable[Any], entity_df: Any) -> dict[str, SourceRead]:
    """Per source, the rows a point-in-time join can use: feature times from the earliest entity time less the
    view's TTL (no TTL: from the start) to the latest entity time; the columns of the views that read it."""
    times = _entity_time_range(entity_df)
    if times is None:
        return {}
    earliest, latest = times
    reads: dict[str, SourceRead] = {}
    for view in feature_views:
        source = view.batch_source
        ttl = view.ttl if view.ttl and view.ttl.total_seconds() else None
        since = earliest - ttl if ttl is not None else None
        columns = {
            *(c.name for c in view.entity_columns), *(f.name for f in view.features), source.timestamp_field,
            source.created_timestamp_column or "",
        } - {""}  # fmt: skip
        read = SourceRead(source.timestamp_field, since, latest, _projectable(source, columns))
        reads[source.name] = reads[source.name].widened(read) if source.name in reads else read
    return reads


def _entity_time_range(entity_df: Any) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The earliest and latest entity time, in UTC (a naive time is UTC, as Feast takes it), in the column Feast
    takes them from; None when there is no pandas entity frame or a time is missing: the job then reads whole
    sources, as Feast does."""
    if not isinstance(entity_df, pd.DataFrame) or entity_df.empty:
        return None
    column = infer_event_timestamp_from_entity_df(dict(entity_df.dtypes))
    times = pd.to_datetime(entity_df[column], utc=True)
    return None if times.isna().any() else (times.min(), times.max())


def _projectable(source: Any, columns: set[str]) -> frozenset[str] | None:
    """``columns`` where they are the source's own names; all columns where a field mapping renames them."""
    return None if source.field_mapping else frozenset(columns)


def _reading(job: RetrievalJob, reads: Mapping[str, SourceRead]) -> RetrievalJob:
    """``job``, evaluating with ``reads`` in force (Feast evaluates lazily, on ``to_df`` or ``to_arrow``)."""
    evaluate: Callable[[], Any] = job.evaluation_function  # type: ignore[attr-defined]

    def evaluate_reading() -> Any:
        token = _reads.set(reads)
        try:
            return evaluate()
        finally:
            _reads.reset(token)

    job.evaluation_function = evaluate_reading  # type: ignore[attr-defined]
    return job


def read_source(data_source: Any, repo_path: Any) -> dd.DataFrame:
    """A Delta source's current snapshot (only what the job keeps, where it said); any other source through
    Feast's own read."""
    if not isinstance(data_source.file_options.file_format, DeltaFormat):
        return _feast_read_source(data_source, repo_path)
    uri = FileSource.get_uri_for_file_path(repo_path=repo_path, uri=data_source.file_options.uri)
    snapshot = DeltaTable(uri, storage_options=get_settings().storage_options or None)
    keep = (_reads.get() or {}).get(data_source.name)
    if keep is None:
        return dd.from_pandas(snapshot.to_pandas(), npartitions=1, sort=False)
    dataset = snapshot.to_pyarrow_dataset()
    columns = [c for c in dataset.schema.names if keep.columns is None or c in keep.columns]
    rows = dataset.to_table(columns=columns, filter=keep.filter(dataset.schema))
    return dd.from_pandas(rows.to_pandas(), npartitions=1, sort=False)


_feast_read_source = feast_dask._read_datasource
if getattr(_feast_read_source, "__module__", "") != __name__:  # once, however often the module is reloaded
    feast_dask._read_datasource = read_source
