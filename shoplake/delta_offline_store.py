"""Feast's file (dask) offline store, reading a Delta source as Delta: the files of the table's current snapshot.

Feast 0.67's dask store reads every ``FileSource`` with ``dd.read_parquet(path)``, whatever its format, so on a
Delta table it reads every Parquet file in the folder: also the files an overwrite, a failed quality gate or a trial
replaced, which only the Delta log says are gone. Materialization and point-in-time joins then saw stale and
rejected rows (a lake whose latest date was rerun: 15,818 user feature rows where the snapshot holds 4,504), and
the newest ``created_timestamp`` among them, a failed or sampled run's, could win. This store, configured as the
local offline store, is Feast's dask store with only that read changed: a ``DeltaFormat`` source is read as its
snapshot with ``deltalake`` (partition columns included), any other source as Feast reads it. The read is a module
function of Feast's store, so importing this module (as Feast does to load the store) installs it for the process.
"""

from __future__ import annotations

from typing import Any, Literal

import dask.dataframe as dd
from deltalake import DeltaTable
from feast.data_format import DeltaFormat
from feast.infra.offline_stores import dask as feast_dask
from feast.infra.offline_stores.dask import DaskOfflineStore, DaskOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource

from shoplake.settings import get_settings

STORE_TYPE = "shoplake.delta_offline_store.DeltaFileOfflineStore"


class DeltaFileOfflineStoreConfig(DaskOfflineStoreConfig):
    """Feast's dask settings, as they are."""

    type: Literal["shoplake.delta_offline_store.DeltaFileOfflineStore"] = STORE_TYPE  # type: ignore[assignment]


class DeltaFileOfflineStore(DaskOfflineStore):
    """Feast's dask offline store; its source read is ``read_source`` (installed below)."""


def read_source(data_source: Any, repo_path: Any) -> dd.DataFrame:
    """A Delta source's current snapshot; any other source through Feast's own read."""
    if not isinstance(data_source.file_options.file_format, DeltaFormat):
        return _feast_read_source(data_source, repo_path)
    uri = FileSource.get_uri_for_file_path(repo_path=repo_path, uri=data_source.file_options.uri)
    snapshot = DeltaTable(uri, storage_options=get_settings().storage_options or None)
    return dd.from_pandas(snapshot.to_pandas(), npartitions=1, sort=False)


_feast_read_source = feast_dask._read_datasource
if getattr(_feast_read_source, "__module__", "") != __name__:  # once, however often the module is reloaded
    feast_dask._read_datasource = read_source
