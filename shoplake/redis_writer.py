"""Bulk writes of feature views' rows into Feast's Redis online store, in Feast's own layout.

Feast's materialization converts every value through its generic Python type mapping and, on Redis, reads each
entity's stored timestamp before writing: about 6,000 entity rows/s on two cores. Publishing to Redis goes through
this writer instead. It selects what Feast's Spark offline store selects for a window — the latest row per entity
with its feature time in ``[since, until]`` — from the gold table's Delta snapshot read as Arrow on the driver
(Feast's materialization collects the rows to the driver too), encodes each value as the
``ValueProto`` Feast writes for the field's type, and writes pipelined HSETs under Feast's keys: the serialized
entity key with the project, fields ``mmh3("<view>:<feature>")`` and ``_ts:<view>``. Feast's SDK reads the rows
back unchanged (the tests compare with Feast's own materialization); ``feature_store.publish`` then records the
window in the registry as Feast's materialize does. Views with a type this writer does not encode, or with more
than one join key, keep going through Feast's materialization.

Views of one table over one window are written together: one HSET per entity carries all their fields. One
publisher at a time (the DAG runs one at a time), so no per-entity timestamp check is needed: a window's rows are
never older than what an earlier window wrote.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore, FeatureView

ROWS_PER_PIPELINE = 2_000


def _encoders() -> dict[Any, Callable[[Any], bytes]]:
    """Feast value type → the serialized ``ValueProto`` of one Python value (None → the empty value, as Feast)."""
    from feast.protos.feast.types.Value_pb2 import DoubleList, FloatList, Int32List, Int64List, StringList, Value
    from feast.value_type import ValueType

    def scalar(field: str) -> Callable[[Any], bytes]:
        return lambda v: Value(**{field: v}).SerializeToString()

    def listed(field: str, kind: Any) -> Callable[[Any], bytes]:
        return lambda v: Value(**{field: kind(val=v)}).SerializeToString()

    return {
        ValueType.INT64: scalar("int64_val"), ValueType.INT32: scalar("int32_val"),
        ValueType.DOUBLE: scalar("double_val"), ValueType.FLOAT: scalar("float_val"),
        ValueType.STRING: scalar("string_val"), ValueType.BOOL: scalar("bool_val"),
        ValueType.INT64_LIST: listed("int64_list_val", Int64List), ValueType.INT32_LIST: listed("int32_list_val", Int32List),
        ValueType.DOUBLE_LIST: listed("double_list_val", DoubleList), ValueType.FLOAT_LIST: listed("float_list_val", FloatList),
        ValueType.STRING_LIST: listed("string_list_val", StringList),
    }  # fmt: skip


def supports(view: FeatureView) -> bool:
    """Whether this writer can write ``view`` exactly as Feast would."""
    from feast.value_type import ValueType

    encoders = _encoders()
    keys = view.entity_columns
    return (
        len(keys) == 1
        and keys[0].dtype.to_value_type() in (ValueType.INT64, ValueType.STRING)
        and all(f.dtype.to_value_type() in encoders for f in view.features)
        and not (_source(view).field_mapping or {})
    )


def _source(view: FeatureView) -> Any:
    if view.batch_source is None:
        raise ValueError(f"feature view {view.name} has no batch source")
    return view.batch_source


def latest_rows(table: str, views: list[FeatureView], since: dt.datetime, until: dt.datetime) -> pa.Table:
    """The latest row per entity with its feature time in ``[since, until]`` (newest creation time on ties), with
    the features of every view in ``views`` — views of one table, which share its key and times. Only the window's
    rows are read (a gold date is a partition), so a daily publish does not grow with the shop's history."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from shoplake import storage

    source = _source(views[0])
    key, time = views[0].entity_columns[0].name, source.timestamp_field
    created = [source.created_timestamp_column] if source.created_timestamp_column else []
    features = list(dict.fromkeys(f.name for view in views for f in view.features))
    utc = pa.timestamp("us", tz="UTC")  # how deltalake reads a Delta timestamp
    inside = (pc.field(time) >= pa.scalar(since, utc)) & (pc.field(time) <= pa.scalar(until, utc))
    rows = storage.read_arrow(table, list(dict.fromkeys([key, time, *created, *features])), where=inside)
    order = [
        (key, "ascending", "at_end"),
        (time, "descending", "at_end"),
        *((c, "descending", "at_end") for c in created),
    ]
    rows = rows.take(pc.sort_indices(rows, sort_keys=order))
    keys = rows.column(key)
    first = pc.not_equal(keys.slice(1), keys.slice(0, max(len(keys) - 1, 0)))
    latest = pa.concat_arrays([pa.array([True] if len(keys) else [], pa.bool_()), *first.chunks])
    rows = rows.filter(latest)
    micros = pc.cast(pc.cast(rows.column(time), pa.timestamp("us", tz="UTC")), pa.int64())
    return rows.select([key, *features]).append_column("_feature_micros", micros)


def write_views(store: FeatureStore, views: list[FeatureView], rows: pa.Table) -> int:
    """Write ``rows`` (from ``latest_rows``) for each of ``views``: one HSET per entity carries every view's fields
    and timestamps. Encoding a batch overlaps with Redis writing the previous one. Returns the entities written."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from feast.infra.online_stores.redis import _mmh3
    from feast.value_type import ValueType
    from google.protobuf.timestamp_pb2 import Timestamp

    encoders = _encoders()
    online_store: Any = store._get_provider().online_store  # noqa: SLF001 - Feast's own client for this config
    client = online_store._get_client(store.config.online_store)  # noqa: SLF001
    key_name = views[0].entity_columns[0].name
    key_field = "int64_val" if views[0].entity_columns[0].dtype.to_value_type() == ValueType.INT64 else "string_val"
    fields = [(f.name, _mmh3(f"{view.name}:{f.name}"), f.dtype.to_value_type())
              for view in views for f in view.features]  # fmt: skip
    entity_key = _entity_key_of(store.project, key_name, key_field, store.config.entity_key_serialization_version)
    ts_fields = [f"_ts:{view.name}" for view in views]

    def send(keys: list[bytes], mappings: list[dict[Any, bytes]]) -> None:
        with client.pipeline(transaction=False) as pipe:
            for key, mapping in zip(keys, mappings, strict=True):
                pipe.hset(key, mapping=mapping)
            pipe.execute()

    written = 0
    with ThreadPoolExecutor(max_workers=1) as sender:
        pending: Future[None] | None = None
        for batch in rows.to_batches(max_chunksize=ROWS_PER_PIPELINE):
            keys = [entity_key(k) for k in batch.column(key_name).to_pylist()]
            stamps = [Timestamp(seconds=m // 1_000_000, nanos=m % 1_000_000 * 1000).SerializeToString()
                      for m in batch.column("_feature_micros").to_pylist()]  # fmt: skip
            encoded = [(field, _encoded(batch.column(name), kind, encoders[kind])) for name, field, kind in fields]
            mappings: list[dict[Any, bytes]] = [dict.fromkeys(ts_fields, stamp) for stamp in stamps]
            for field, values in encoded:
                for mapping, value in zip(mappings, values, strict=True):
                    mapping[field] = value
            if pending is not None:
                pending.result()
            pending = sender.submit(send, keys, mappings)
            written += len(keys)
        if pending is not None:
            pending.result()
    return written


# Value fields (ValueProto numbers) of the list types whose elements protobuf packs as raw little-endian bytes.
_PACKED_LISTS = {"FLOAT_LIST": (16, "float"), "DOUBLE_LIST": (15, "double")}


def _encoded(column: pa.Array, kind: Any, encode: Callable[[Any], bytes]) -> list[bytes]:
    """Each value's serialized ``ValueProto`` (None → the empty value, as Feast). Float and double lists are framed
    straight from Arrow's buffer — protobuf's packed encoding is those bytes behind two length prefixes — rather
    than through a Python float per element (the embeddings are most of what is written)."""
    import pyarrow as pa

    packed = _PACKED_LISTS.get(kind.name)
    if (packed and pa.types.is_list(column.type) and str(column.type.value_type) == packed[1]
            and column.values.null_count == 0):  # fmt: skip
        tag = _varint(packed[0] << 3 | 2)
        width = column.type.value_type.bit_width // 8
        data = memoryview(column.values.to_numpy()).cast("B")
        offsets = column.offsets.to_numpy()
        out = []
        for row, valid in enumerate(column.is_valid().to_pylist()):
            if not valid:
                out.append(b"")
                continue
            start, end = int(offsets[row]) * width, int(offsets[row + 1]) * width
            inner = b"\x0a" + _varint(end - start) + data[start:end] if end > start else b""
            out.append(tag + _varint(len(inner)) + inner)
        return out
    return [b"" if v is None else encode(v) for v in column.to_pylist()]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _entity_key_of(project: str, join_key: str, value_field: str, version: int) -> Callable[[Any], bytes]:
    """A function from an entity value to its Redis key. Int64 keys are Feast's serialized key of 0 with the last
    8 bytes (the value, little-endian) replaced — checked against Feast's own serialization of probe values first;
    anything else goes through Feast's serialization."""
    import struct

    def feasts(value: Any) -> bytes:
        return _entity_key(project, join_key, value_field, value, version)

    if value_field != "int64_val":
        return feasts
    zero = feasts(0)
    cut = zero.rfind(struct.pack("<q", 0) + project.encode())
    head, tail = zero[:cut], zero[cut + 8 :]

    def direct(value: int) -> bytes:
        return head + struct.pack("<q", value) + tail

    probes = (1, -1, 2**40 + 7, 9_223_372_036_854_775_807)
    return direct if cut >= 0 and all(direct(p) == feasts(p) for p in probes) else feasts


@functools.lru_cache(maxsize=1_000_000)
def _entity_key(project: str, join_key: str, value_field: str, value: Any, version: int) -> bytes:
    """Feast's Redis key of an entity (several views of one entity share it; computing it is the costly part)."""
    from feast.infra.online_stores.redis import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    entity = EntityKey(join_keys=[join_key], entity_values=[Value(**{value_field: value})])
    return _redis_key(project, entity, entity_key_serialization_version=version)
