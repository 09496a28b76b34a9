"""Feast's SQLite online store with a leaner read: only the requested features' rows are fetched and parsed.

Feast's SQLite read fetches every feature of each requested entity — 19 rows per item for ``item_stats`` where a
recommender asks for 3 — parses each into a ``ValueProto`` and converts each row's time to a datetime, then keeps
the requested features; it also serializes each entity key again on every request. This store, configured as the
local online store, is Feast's ``SqliteOnlineStore`` with only ``online_read`` changed: the query selects the
requested features, an entity's key is serialized once (memoised) and its time converted once. Writes, tables and
the response are Feast's, unchanged: the tests compare the response proto with Feast's stock store's.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any, Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _quote_id, _table_id
from feast.protos.feast.types.Value_pb2 import Value

STORE_TYPE = "shoplake.sqlite_online_store.ShoplakeSqliteOnlineStore"


class ShoplakeSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """Feast's SQLite settings, as they are (path, vector and text-search options)."""

    type: Literal["shoplake.sqlite_online_store.ShoplakeSqliteOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class ShoplakeSqliteOnlineStore(SqliteOnlineStore):
    def online_read(
        self,
        config: Any,
        table: Any,
        entity_keys: list[Any],
        requested_features: list[str] | None = None,
    ) -> list[tuple[dt.datetime | None, dict[str, Any] | None]]:
        """Feast's read of ``requested_features`` (all of them when None) for each entity: its values and time, or
        (None, None) when nothing of it is stored."""
        if not requested_features or not entity_keys:
            return super().online_read(config, table, entity_keys, requested_features)
        version = config.entity_key_serialization_version
        keys = [_serialized_key(entity.SerializeToString(), version) for entity in entity_keys]
        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        # ``event_ts + 0`` has no declared type, so sqlite3 returns the stored seconds instead of converting each row
        rows = self._get_conn(config).execute(
            f"SELECT entity_key, feature_name, value, event_ts + 0 FROM {name} "
            f"WHERE entity_key IN ({','.join('?' * len(keys))}) "
            f"AND feature_name IN ({','.join('?' * len(requested_features))})",
            [*keys, *requested_features],
        )
        found: dict[bytes, tuple[Any, dict[str, Any]]] = {}
        for key, feature, value, seconds in rows:
            values = found[key][1] if key in found else {}
            values[feature] = Value.FromString(value)
            found[key] = (seconds, values)
        times: dict[Any, dt.datetime] = {}
        result: list[tuple[dt.datetime | None, dict[str, Any] | None]] = []
        for key in keys:
            if key not in found:
                result.append((None, None))
                continue
            seconds, values = found[key]
            if seconds not in times:  # as Feast's converter: local wall time of the stored seconds, labelled UTC
                times[seconds] = dt.datetime.fromtimestamp(int(seconds)).replace(tzinfo=dt.UTC)
            result.append((times[seconds], values))
        return result


@functools.lru_cache(maxsize=100_000)
def _serialized_key(entity: bytes, version: int) -> bytes:
    """Feast's serialized entity key (the costly part of a read), memoised on the entity key proto's bytes."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    return serialize_entity_key(EntityKey.FromString(entity), entity_key_serialization_version=version)
