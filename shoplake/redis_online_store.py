"""Feast's Redis online store with a leaner read: one HMGET per entity instead of one per (feature view, entity).

Feast keeps all feature views of an entity in one Redis hash (key: the serialized entity key with the project), yet
its read sends one HMGET per view and entity — 300 commands for 100 items read through 3 views — and serializes the
entity key again for each. This store, configured as the production online store, is Feast's ``RedisOnlineStore``
with only the read changed: views with the same join keys share one HMGET per entity with all their fields, an
entity's key is serialized once (memoised), and the replies go into the response without Feast's per-(view, entity)
dict and datetime. Writes, keys, layout and the response are Feast's, unchanged: the tests compare the response
proto with Feast's stock store's for feature services, on-demand views, repeated and unknown entities.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, _versioned_fv_name
from feast.utils import _get_unique_entities, _populate_response_from_feature_data

STORE_TYPE = "shoplake.redis_online_store.ShoplakeRedisOnlineStore"


class ShoplakeRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis settings, as they are (connection string, Redis type, key TTL)."""

    type: Literal["shoplake.redis_online_store.ShoplakeRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]


class ShoplakeRedisOnlineStore(RedisOnlineStore):
    def _read_features_per_fv(
        self,
        config: Any,
        grouped_refs: list,
        join_key_values: dict,
        entity_name_to_join_key_map: dict,
        online_features_response: Any,
        full_feature_names: bool,
        include_feature_view_version_metadata: bool,
    ) -> None:
        """Feast's batched read (one pipeline for all views), with one HMGET per distinct entity key."""
        project = config.project.encode("utf-8")
        version = config.entity_key_serialization_version
        fields_of: dict[bytes, list[Any]] = {}  # Redis key → the hash fields asked of it, all views together
        entities_of: dict[tuple, tuple[list[bytes], Any, int]] = {}  # views with the same join keys: one plan
        plans = []
        for table, requested_features in grouped_refs:
            join = (tuple(table.entities), tuple(sorted(table.projection.join_key_map.items())))
            if join not in entities_of:
                entities, indexes, output_len = _get_unique_entities(
                    table, join_key_values, entity_name_to_join_key_map
                )
                entities_of[join] = ([_entity_key(e, version) + project for e in entities], indexes, output_len)
            entity_keys, indexes, output_len = entities_of[join]
            view_name = _versioned_fv_name(table, config)
            names, hash_fields = self._generate_hset_keys_for_features(table, requested_features, view_name)
            slices = []
            for key in entity_keys:
                fields = fields_of.setdefault(key, [])
                slices.append((key, len(fields)))
                fields.extend(hash_fields)
            plans.append((table, view_name, names, len(hash_fields), slices, indexes, output_len))
        if not plans:
            return
        keys = list(fields_of)
        replies = dict(zip(keys, self._read_hash_fields(config, [(k, fields_of[k]) for k in keys]), strict=True))
        stamps: dict[Any, Any] = {}
        for table, view_name, names, width, slices, indexes, output_len in plans:
            values = [replies[key][start : start + width] for key, start in slices]
            if include_feature_view_version_metadata:
                rows = self._convert_redis_values_to_protobuf(values, view_name, names)
                _populate_response_from_feature_data(names, rows, indexes, online_features_response,
                                                     full_feature_names, table, output_len, True)  # fmt: skip
            else:
                _place_view(online_features_response, table, names, values, indexes, output_len, full_feature_names,
                            stamps)  # fmt: skip


def _place_view(
    response: Any,
    table: Any,
    names: list[str],
    values: list[list[Any]],
    indexes: Any,
    output_len: int,
    full_feature_names: bool,
    stamps: dict[Any, Any],
) -> None:
    """What Feast's ``_convert_redis_values_to_protobuf`` + ``_populate_response_from_feature_data`` put into the
    response — the same vectors, statuses and timestamps — without a dict and a datetime per (view, entity).
    ``names`` ends with the view's ``_ts:`` field, whose reply is each entity's feature time; Feast adds a vector
    for it too, which its ``get_online_features`` then drops, so it is left out here."""
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
    from feast.protos.feast.types.Value_pb2 import Value

    features = names[:-1]
    prefix = f"{table.projection.name_to_use()}__" if full_feature_names else ""
    response.metadata.feature_names.val.extend([prefix + name for name in features])
    null = Value()
    times = [None] * output_len
    for reply, destinations in zip(values, indexes, strict=True):
        if reply[-1] not in stamps:
            stamps[reply[-1]] = _feast_timestamp(reply[-1])
        for out in destinations:
            times[out] = stamps[reply[-1]]
    statuses = [FieldStatus.PRESENT] * output_len  # Feast's Redis read marks a missing entity's fields present too
    for position in range(len(features)):
        column = [null] * output_len
        for reply, destinations in zip(values, indexes, strict=True):
            raw = reply[position]
            if raw:
                value = Value.FromString(raw)
                for out in destinations:
                    column[out] = value
        response.results.append(
            GetOnlineFeaturesResponse.FeatureVector(values=column, statuses=statuses, event_timestamps=times)
        )


def _feast_timestamp(raw: bytes | None) -> Any:
    """The event timestamp Feast reports for a stored ``_ts:`` value (through a float of seconds, as Feast does)."""
    import datetime as dt

    from google.protobuf.timestamp_pb2 import Timestamp

    stored = Timestamp.FromString(raw) if raw else Timestamp()
    seconds = stored.seconds + stored.nanos / 1_000_000_000.0
    reported = Timestamp()
    reported.FromDatetime(dt.datetime.fromtimestamp(seconds, tz=dt.UTC))
    return reported


def _entity_key(entity: dict[str, Any], version: int) -> bytes:
    """Feast's serialized entity key (the costly part of a key), memoised on the entity's values."""
    return _serialized_key(tuple(entity), tuple(v.SerializeToString() for v in entity.values()), version)


@functools.lru_cache(maxsize=100_000)
def _serialized_key(join_keys: tuple[str, ...], values: tuple[bytes, ...], version: int) -> bytes:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    entity = EntityKey(join_keys=join_keys, entity_values=[Value.FromString(v) for v in values])
    return serialize_entity_key(entity, entity_key_serialization_version=version)
