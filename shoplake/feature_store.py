"""Feast for shoplake: the store of each environment, publishing (apply + materialize), and the consistency check.

Environments (``SHOPLAKE_FEAST_ENV``), each also written as a ``feature_store.yaml`` under ``feature_repo/``:
- ``local``: file registry and SQLite online store under ``$SHOPLAKE_HOME/feast`` (Feast's SQLite store with a
  leaner read, ``sqlite_online_store``), Feast's file offline store reading the gold Delta tables' snapshots
  through ``deltalake`` (``delta_offline_store``).
- ``production``: SQL registry on PostgreSQL (``SHOPLAKE_FEAST_REGISTRY_URL``), Redis online store
  (``SHOPLAKE_FEAST_REDIS``; Feast's Redis store with a leaner read, ``redis_online_store``), Feast's Spark offline
  store. Delta's Spark connector is absent here, so the gold tables are registered as Spark temporary views over
  their Delta snapshots (``register_spark_tables``).

Publishing applies the definitions (re-applying keeps each view's materialization watermark) and materializes each
feature view from its watermark — on the first run from its table's earliest feature time — up to the run's
feature time. ``online_writer`` writes the views' rows to the online store (SQLite or Redis) in bulk, in the keys
and values Feast's materialization would write (that row-by-row materialization was the slow part of publishing),
and the window is recorded in the registry as Feast's materialize records it; a view it cannot write goes through
Feast's materialize. Connection failures are retried with backoff and then reported as one clear error;
definitions are written only by ``apply``, which Feast commits as a whole.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shoplake.errors import ShoplakeError
from shoplake.settings import Settings, get_settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)
REPO_DIR = Path(__file__).resolve().parent.parent / "feature_repo"
PROJECT = "shoplake"
GOLD_FEATURE_TIME = "event_timestamp"  # the end of the gold date a row describes
FEATURE_TABLES = (
    "user_features", "user_items", "item_features", "item_neighbors", "item_embeddings", "category_popular",
)  # fmt: skip
T = TypeVar("T")


class FeatureStoreError(ShoplakeError):
    """The feature store could not be reached or refused an operation."""


class NothingToPublishError(ShoplakeError):
    """Gold has never been computed, so there are no features to publish."""


def repo_config(settings: Settings | None = None) -> Any:
    from feast.repo_config import RepoConfig

    from shoplake.delta_offline_store import STORE_TYPE as DELTA_OFFLINE_STORE
    from shoplake.redis_online_store import STORE_TYPE as REDIS_STORE
    from shoplake.sqlite_online_store import STORE_TYPE as SQLITE_STORE

    settings = settings or get_settings()
    feast_dir = settings.home / "feast"
    feast_dir.mkdir(parents=True, exist_ok=True)
    if settings.feast_env == "production":
        return RepoConfig(
            project=PROJECT, provider="local", entity_key_serialization_version=3,
            registry={"registry_type": "sql", "path": settings.feast_registry_url, "cache_ttl_seconds": 60,
                      "sqlalchemy_config_kwargs": {"pool_pre_ping": True}},
            online_store={"type": REDIS_STORE, "connection_string": settings.feast_redis},
            offline_store={"type": "spark", "spark_conf": {"spark.sql.session.timeZone": "UTC"}},
            repo_path=str(REPO_DIR),
        )  # fmt: skip
    return RepoConfig(
        project=PROJECT, provider="local", entity_key_serialization_version=3,
        registry={"registry_type": "file", "path": str(feast_dir / "registry.db"), "cache_ttl_seconds": 0},
        online_store={"type": SQLITE_STORE, "path": str(feast_dir / "online.db")},
        offline_store={"type": DELTA_OFFLINE_STORE},
        repo_path=str(REPO_DIR),
    )  # fmt: skip


def retrying(what: str, call: Callable[[], T], attempts: int = 3, first_wait: float = 1.0) -> T:
    """Retry a call that fails on a connection (Redis, PostgreSQL down) with backoff, then one clear error."""
    errors = _connection_errors()
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except errors as error:
            if attempt == attempts:
                raise FeatureStoreError(f"{what}: the feature store is unreachable after {attempts} attempts "
                                        f"({type(error).__name__}: {error})") from error  # fmt: skip
            log.warning("%s failed (%s); retrying in %.0f s", what, error, wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def _connection_errors() -> tuple[type[BaseException], ...]:
    import redis
    import sqlalchemy.exc

    return (redis.exceptions.ConnectionError, sqlalchemy.exc.OperationalError, ConnectionError, OSError)


def get_store(settings: Settings | None = None) -> FeatureStore:
    from feast import FeatureStore

    settings = settings or get_settings()
    return retrying("opening the feature store", lambda: FeatureStore(config=repo_config(settings)))


def definitions() -> list[Any]:
    """Every Feast object of ``feature_repo/`` (entities, views, services), built for the current settings.

    The modules read the settings (table paths, environment) when they run, so they are re-run on each call:
    objects built for another lake or environment earlier in the process must not leak into this one."""
    import importlib

    from feature_repo import data_sources, entities, feature_services, feature_views

    for module in (data_sources, feature_views, feature_services):
        importlib.reload(module)

    objects: list[Any] = [entities.user, entities.item, entities.category]
    objects += [
        feature_views.user_profile, feature_views.user_activity, feature_views.user_category_affinity,
        feature_views.user_history, feature_views.item_stats, feature_views.item_embedding,
        feature_views.item_neighbors, feature_views.category_popular, feature_views.price_for_user,
        feature_services.recommender_v1, feature_services.marketing_analytics_v1,
    ]  # fmt: skip
    return objects


def register_spark_tables(spark: SparkSession) -> list[str]:
    """Production's Spark offline store reads ``shoplake_<table>``: temporary views over the Delta snapshots."""
    from feature_repo.data_sources import SPARK_TABLE_PREFIX
    from shoplake import storage

    registered = []
    for table in FEATURE_TABLES:
        if storage.table_version(table) is not None:
            storage.read_table(spark, table).createOrReplaceTempView(f"{SPARK_TABLE_PREFIX}{table}")
            registered.append(table)
    return registered


def apply(store: FeatureStore) -> None:
    objects = definitions()
    retrying("feast apply", lambda: store.apply(objects))


@dataclass(frozen=True)
class Materialized:
    view: str
    start: dt.datetime
    end: dt.datetime


def feature_time_range(table: str, column: str) -> tuple[dt.datetime, dt.datetime] | None:
    """Earliest and latest feature time in a gold table (None when it is empty or missing): one column read by
    ``deltalake``, no Spark job."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from shoplake import storage

    if storage.table_version(table) is None:
        return None
    times = pc.cast(storage.read_arrow(table, [column]).column(column), pa.timestamp("us", tz="UTC"))
    extremes = pc.min_max(times)
    low, high = extremes["min"], extremes["max"]
    if not low.is_valid:
        return None
    return low.as_py(), high.as_py()


def publish(
    spark: SparkSession,
    settings: Settings | None = None,
    *,
    full_refresh: bool = False,
    since: dt.date | None = None,
) -> list[Materialized]:
    """Apply the definitions, then bring every feature view's online values up to its table's latest feature time.

    The watermark follows feature time (the end of a gold date; an embedding's creation), not the clock, so a
    shop's history loads on the first publish and each daily run adds its date. The newest gold date is published
    every time, even under the watermark: a rerun of it (late events) changes its rows without moving the
    watermark, and online would keep the old values. A rerun of an older gold date passes it as ``since``: the gold
    views are materialized again from that date on, so an entity whose latest row is that date's (a user only its
    late events hold) goes online, while the others keep their newer rows (the latest row in the window wins).
    ``full_refresh`` materializes each view from its earliest feature time again."""
    from shoplake import online_writer, storage
    from shoplake.catalog import USER_FEATURES

    settings = settings or get_settings()
    if storage.table_version(USER_FEATURES) is None:  # every gold run writes it; else Feast "published" nothing
        raise NothingToPublishError("nothing to publish: gold has not been computed yet; run `shoplake gold` "
                                    "(or `shoplake pipeline`) first")  # fmt: skip
    if settings.feast_env == "production":
        register_spark_tables(spark)
    store = get_store(settings)
    apply(store)
    done = []
    together: dict[tuple[str, dt.datetime, dt.datetime], list[Any]] = {}
    for view, start, end in _windows(store.list_feature_views(), full_refresh, since):
        if online_writer.supports(view, store.config.online_store):
            together.setdefault((_table(view), start, end), []).append(view)
        else:
            _materialize(store, view.name, start, end)
        done.append(Materialized(view.name, start, end))
    for (table, start, end), views in together.items():
        _write_online(store, table, start, end, views)
        for view in views:
            record = functools.partial(store.registry.apply_materialization, view, store.project, start, end)
            retrying(f"recording {view.name}'s materialization", record)
    return done


def _windows(
    views: list[Any], full_refresh: bool, since: dt.date | None = None
) -> list[tuple[Any, dt.datetime, dt.datetime]]:
    """(view, start, end) for each view with features past its watermark, or gold features from ``since`` on."""
    ranges: dict[tuple[str, str], tuple[dt.datetime, dt.datetime] | None] = {}
    windows = []
    for view in views:
        table, column = _table(view), _source(view).timestamp_field
        if (table, column) not in ranges:
            ranges[table, column] = feature_time_range(table, column)
        times = ranges[table, column]
        if times is None:
            log.info("%s: its table is empty; nothing to materialize", view.name)
            continue
        earliest, latest = times
        end = latest + dt.timedelta(seconds=1)
        intervals = [] if full_refresh else view.materialization_intervals
        start = max(i[1] for i in intervals) if intervals else earliest - dt.timedelta(seconds=1)
        if column == GOLD_FEATURE_TIME:  # the newest date again, and any rerun date (see publish)
            start = min(start, latest - dt.timedelta(seconds=1))
            if since is not None:
                from shoplake.catalog import gold_feature_time

                start = min(start, gold_feature_time(since) - dt.timedelta(seconds=1))
        if start >= end:
            log.info("%s: already materialized up to %s", view.name, start)
            continue
        windows.append((view, start, end))
    return windows


def _materialize(store: FeatureStore, view: str, start: dt.datetime, end: dt.datetime) -> None:
    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # Feast prints progress for terminals
            store.materialize(start_date=start, end_date=end, feature_views=[view])
        log.debug("%s", printed.getvalue())

    retrying(f"materializing {view}", run)


def _write_online(store: FeatureStore, table: str, start: dt.datetime, end: dt.datetime, views: list[Any]) -> None:
    """The views that read ``table`` over one window, in one pass."""
    from shoplake import online_writer

    rows = online_writer.latest_rows(table, views, start, end)
    retrying(f"writing {', '.join(v.name for v in views)} online", lambda: online_writer.write(store, views, rows))


def _source(view: Any) -> Any:
    if view.batch_source is None:
        raise FeatureStoreError(f"feature view {view.name} has no batch source")
    return view.batch_source


def _table(view: Any) -> str:
    """The gold table a feature view reads."""
    from feature_repo.data_sources import gold_table

    return gold_table(_source(view).name)


def online_features(store: FeatureStore, features: list[str] | Any, entity_rows: list[dict[str, Any]]) -> dict:
    from feast.errors import FeatureViewNotFoundException

    try:
        return retrying("reading online features",
                        lambda: response_values(store.get_online_features(features=features, entity_rows=entity_rows)))  # fmt: skip
    except FeatureViewNotFoundException as error:  # a store nobody published to yet: Feast's traceback said no more
        raise FeatureStoreError(f"{error}: publish the features first (`shoplake publish`, or `shoplake pipeline`)"
                                ) from error  # fmt: skip


# Value kinds that Feast's to_dict returns as they are (scalars) or as a plain list (lists), unless a UUID type
# hint asks it to parse strings.
_PLAIN_SCALARS = frozenset(f"{t}_val" for t in ("int32", "int64", "float", "double", "string", "bool", "bytes"))
_PLAIN_LISTS = frozenset(f"{t}_list_val" for t in ("int32", "int64", "float", "double", "string", "bool", "bytes"))


def response_values(response: Any) -> dict[str, list[Any]]:
    """``OnlineResponse.to_dict()``: the same values, without Feast's per-value type dispatch for plain numbers,
    strings and their lists (for 100 items with 384-float embeddings that dispatch was a third of a request).
    Any other kind (timestamps, maps, sets) and UUID-typed features go through Feast's own conversion."""
    from feast.type_map import feast_value_type_to_python_type
    from feast.value_type import ValueType

    uuid_types = {ValueType.UUID, ValueType.TIME_UUID, ValueType.UUID_LIST, ValueType.TIME_UUID_LIST}
    types = getattr(response, "_feature_types", None) or {}  # what Feast's to_dict reads: name → declared type
    out: dict[str, list[Any]] = {}
    for name, vector in zip(response.proto.metadata.feature_names.val, response.proto.results, strict=True):
        hint = types.get(name)
        if hint in uuid_types:
            out[name] = [feast_value_type_to_python_type(v, hint) for v in vector.values]
            continue
        column: list[Any] = []
        for value in vector.values:
            kind = value.WhichOneof("val")
            if kind is None:
                column.append(None)
            elif kind in _PLAIN_LISTS:
                column.append(list(getattr(value, kind).val))
            elif kind in _PLAIN_SCALARS:
                column.append(getattr(value, kind))
            else:
                column.append(feast_value_type_to_python_type(value, hint))
        out[name] = column
    return out


def _same(online: Any, offline: Any) -> bool:
    import math

    if online is None or offline is None:
        return online is None and offline is None
    if isinstance(offline, (list, tuple)):
        return len(online) == len(offline) and all(_same(a, b) for a, b in zip(online, offline, strict=True))
    if isinstance(offline, float) or isinstance(online, float):
        return math.isclose(float(online), float(offline), rel_tol=1e-6, abs_tol=1e-6)
    return bool(online == offline)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_consistency(spark: SparkSession, store: FeatureStore, sample: int = 50) -> dict[str, int]:
    """Sample entities of every feature view; their online values must equal the latest offline values.

    Returns the entities compared per view; raises ``FeatureStoreError`` listing the first mismatches."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from shoplake import storage

    compared: dict[str, int] = {}
    mismatches: list[str] = []
    for view in store.list_feature_views():
        source = _source(view)
        table = _table(view)
        if storage.table_version(table) is None:
            continue
        key = view.entity_columns[0].name
        order = [F.desc(source.timestamp_field)]
        if source.created_timestamp_column:
            order.append(F.desc(source.created_timestamp_column))
        names = [f.name for f in view.features]
        latest = (
            storage.read_table(spark, table)
            .withColumn("_n", F.row_number().over(Window.partitionBy(key).orderBy(*order)))
            .filter(F.col("_n") == 1)
            .orderBy(F.xxhash64(key))
            .limit(sample)
            .select(key, *names)
            .collect()
        )
        if not latest:
            continue
        online = online_features(store, [f"{view.name}:{n}" for n in names], [{key: r[key]} for r in latest])
        for i, row in enumerate(latest):
            for name in names:
                if not _same(online[name][i], row[name]):
                    mismatches.append(f"{view.name} {key}={row[key]} {name}: online {_short(online[name][i])} "
                                      f"≠ offline {_short(row[name])}")  # fmt: skip
        compared[view.name] = len(latest)
    if mismatches:
        raise FeatureStoreError(f"online and offline features differ ({len(mismatches)} values; after a rerun of an "
                                "older gold date, publish with --since that date):\n  "
                                + "\n  ".join(mismatches[:10]))  # fmt: skip
    return compared


def historical_features(spark: SparkSession, store: FeatureStore, entity_df: Any, features: list[str]) -> Any:
    """``get_historical_features`` that keeps every entity row, whatever Feast's offline store does with it.

    Feast 0.67's file (dask) offline store fails when an entity has no rows in a view's source (nulls in the merged
    timestamp column break dask's sort), silently drops an entity row whose only feature rows lie after it, and
    answers only one of the rows that share an entity and a time. So each view is asked only for the rows whose
    entities its source holds, once per (entities, time), in requests where no entity value and time repeat, and
    the answers are joined back onto every entity row: a row without a feature value at its time gets nulls, as
    point-in-time correctness requires. Feature columns are named ``<view>__<feature>``.

    Spark's offline store (production) reads temporary views, which live only in this Spark session: they are
    registered here, over the tables' latest snapshots, so a process that did not publish can ask too."""
    import pandas as pd

    from shoplake import storage

    if store.config.offline_store.type == "spark":
        register_spark_tables(spark)
    rows = entity_df.reset_index(drop=True).assign(_row=lambda df: range(len(df)))
    by_view: dict[str, list[str]] = {}
    for ref in features:
        by_view.setdefault(ref.split(":")[0], []).append(ref)
    known_keys: dict[tuple[str, str], set[Any]] = {}

    def keys_of(table: str, key: str) -> set[Any]:
        if (table, key) not in known_keys:
            found = (
                storage.read_table(spark, table).select(key).distinct()
                if storage.table_version(table) is not None
                else None
            )
            known_keys[table, key] = {r[0] for r in found.collect()} if found is not None else set()
        return known_keys[table, key]

    result = rows
    for view_name, refs in by_view.items():
        needs = _entity_sources(store, view_name)  # (table, join key) pairs the view's values come from
        mask = pd.Series(True, index=rows.index)
        for table, key in needs:
            mask &= rows[key].isin(keys_of(table, key))
        columns = [ref.replace(":", "__") for ref in refs]
        keys = sorted({k for _, k in needs})
        # each (entities, time) is asked once; its answer goes to every row that has it
        first = rows.groupby([*keys, "event_timestamp"], sort=False, dropna=False)["_row"].transform("min")
        asked = rows.loc[mask & (first == rows["_row"]), [*keys, "event_timestamp", "_row"]]
        if asked.empty:
            result = result.assign(**{c: None for c in columns})
            continue

        def fetch(subset: Any, refs: list[str] = refs) -> Any:
            job = store.get_historical_features(entity_df=subset, features=refs, full_feature_names=True)
            return job.to_df()

        answers = [
            retrying(f"historical features of {view_name}", functools.partial(fetch, part))[["_row", *columns]]
            for part in _without_shared_key_times(asked, keys)
        ]
        answered = pd.concat(answers, ignore_index=True).rename(columns={"_row": "_asked"})
        result = (
            result.assign(_asked=first.to_numpy()[result["_row"].to_numpy()])
            .merge(answered, on="_asked", how="left")
            .drop(columns="_asked")
        )
    result = result.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    text = [c for c in result.columns if c not in entity_df.columns and result[c].dtype == object]
    result[text] = result[text].astype(object).where(result[text].notna(), None)  # missing text: None, not NaN
    return result


def _without_shared_key_times(rows: Any, keys: list[str]) -> list[Any]:
    """Split entity rows into requests in which no two rows share a time and the value of any one join key.

    Feast 0.67's file offline store keeps one of the rows that share (the keys joined so far, time) after each
    source view it joins (feast-dev/feast#6787, #5590): two users viewing one item in the same second lose one
    user's features in an on-demand view over user and item views. Spark's store answers every row; such rows are
    rare, so the extra requests are few."""
    parts = []
    remaining = rows
    while not remaining.empty:
        part = remaining
        for key in keys:
            part = part.drop_duplicates([key, "event_timestamp"])
        parts.append(part)
        remaining = remaining.drop(index=part.index)
    return parts


def _entity_sources(store: FeatureStore, view_name: str) -> list[tuple[str, str]]:
    """(source table, join key) for a feature view, or for each source view of an on-demand view."""
    try:
        views = [store.get_feature_view(view_name)]
    except Exception:  # noqa: BLE001 - not a plain view: an on-demand one
        odfv = store.get_on_demand_feature_view(view_name)
        views = [store.get_feature_view(p.name) for p in odfv.source_feature_view_projections.values()]
    return [(_table(v), v.entity_columns[0].name) for v in views]
