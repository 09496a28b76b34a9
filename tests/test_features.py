"""Feast: publishing hand-made gold tables, online retrieval, the online = offline check, point-in-time training
joins without leakage, and the production environment against the real PostgreSQL and Redis."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import uuid

import pandas as pd
import pytest

from shoplake import feature_store, online_writer, storage
from shoplake.catalog import CATEGORY_POPULAR, ITEM_EMBEDDINGS, ITEM_FEATURES, ITEM_NEIGHBORS, USER_FEATURES, USER_ITEMS
from shoplake.errors import ShoplakeError
from shoplake.settings import get_settings

AT = dt.datetime(2026, 1, 1)


def end_of(day: int) -> dt.datetime:
    return dt.datetime(2019, 10, day + 1)


def row(spec, **values):
    base = dict.fromkeys(spec.columns)
    base.update(values)
    return [base[c] for c in spec.columns]


def user_row(user, day, segment, monetary=10.0, frequency=1, category="kids.toys"):
    return row(USER_FEATURES, user_id=user, segment=segment, monetary=monetary, frequency=frequency, r_score=3,
               f_score=2, m_score=4, price_band="mid", carts_7d=1, purchases_30d=frequency,
               view_to_purchase_rate=0.1, views_7d=day, top_categories=[category], top_category_shares=[1.0],
               event_timestamp=end_of(day), created_timestamp=AT, as_of_date=dt.date(2019, 10, day))  # fmt: skip


def item_row(item, day, price):
    return row(ITEM_FEATURES, item_id=item, price_mean=price, views_7d=day, popularity_rank=item,
               view_to_cart_rate=0.1, view_to_purchase_rate=0.05, category_l1="kids",
               category_code="kids.toys", event_timestamp=end_of(day), created_timestamp=AT,
               as_of_date=dt.date(2019, 10, day))  # fmt: skip


def write_gold(spark, users, items):
    def write(spec, rows):
        storage.write_table(spark.createDataFrame(rows, spec.schema), spec, "append", run_id="t")

    write(USER_FEATURES, users)
    write(ITEM_FEATURES, items)
    day = dt.date(2019, 10, 1)
    write(USER_ITEMS, [row(USER_ITEMS, user_id=7, item_ids=[10], item_scores=[2.0], bought_item_ids=[],
                           event_timestamp=end_of(1), created_timestamp=AT, as_of_date=day)])  # fmt: skip
    write(ITEM_NEIGHBORS, [row(ITEM_NEIGHBORS, item_id=10, neighbor_ids=[11], neighbor_weights=[0.5],
                               event_timestamp=end_of(1), created_timestamp=AT, as_of_date=day)])  # fmt: skip
    write(ITEM_EMBEDDINGS, [row(ITEM_EMBEDDINGS, item_id=i, model="all-MiniLM-L6-v2", dim=384,
                                embedding=[1.0] + [0.0] * 383, content_hash="h", embedded_at=AT) for i in (10, 11)])  # fmt: skip


def test_publish_serves_online_matches_offline_and_keeps_its_watermark(spark, lake):
    write_gold(
        spark, [user_row(7, 1, "browsers"), user_row(8, 1, "loyal")], [item_row(10, 1, 5.0), item_row(11, 1, 8.0)]
    )
    done = feature_store.publish(spark)
    assert {m.view for m in done} >= {"user_profile", "item_stats", "item_embedding", "item_neighbors", "user_history"}
    store = feature_store.get_store()
    online = feature_store.online_features(
        store,
        store.get_feature_service("recommender_v1"),
        [{"user_id": 7, "item_id": 10}, {"user_id": 999, "item_id": 10}],
    )
    assert online["segment"] == ["browsers", None]  # an unknown user: null features, not an error
    assert online["neighbor_ids"] == [[11], [11]] and online["item_ids"] == [[10], None]
    assert online["price_to_user_average"][0] == pytest.approx(0.5)  # 5.0 ÷ (10.0 / 1)
    feasts_own = store.get_online_features(
        features=store.get_feature_service("recommender_v1"),
        entity_rows=[{"user_id": 7, "item_id": 10}, {"user_id": 999, "item_id": 10}],
    ).to_dict()
    assert online == feasts_own  # the fast conversion gives Feast's own values
    assert feature_store.check_consistency(spark, store)["user_profile"] == 2

    # re-applying kept the watermark: only the newest gold date is published again, embeddings not at all
    republished = feature_store.publish(spark)
    assert {m.view for m in republished} >= {"user_profile", "item_stats"} and "item_embedding" not in {
        m.view for m in republished
    }
    newest, second = end_of(1).replace(tzinfo=dt.UTC), dt.timedelta(seconds=1)
    assert {(m.start, m.end) for m in republished} == {(newest - second, newest + second)}
    write_gold(spark, [user_row(7, 2, "champions")], [])
    again = feature_store.publish(spark)
    assert "user_profile" in {m.view for m in again}
    store = feature_store.get_store()
    assert feature_store.online_features(store, ["user_profile:segment"], [{"user_id": 7}])["segment"] == ["champions"]
    feature_store.check_consistency(spark, store)
    # the newest date rerun (late events): same feature time, new values, and online follows them
    rerun = spark.createDataFrame([user_row(7, 2, "at_risk")], USER_FEATURES.schema)
    storage.write_table(rerun, USER_FEATURES, "overwrite_partitions", partitions=[{"as_of_date": dt.date(2019, 10, 2)}],
                        run_id="t")  # fmt: skip
    feature_store.publish(spark)
    store = feature_store.get_store()
    assert feature_store.online_features(store, ["user_profile:segment"], [{"user_id": 7}])["segment"] == ["at_risk"]
    feature_store.check_consistency(spark, store)

    from feast.errors import FeatureServiceNotFoundException

    with pytest.raises(FeatureServiceNotFoundException):
        store.get_feature_service("recommender_v9")


@pytest.mark.parametrize("environment", ["local", "production"])
def test_publish_since_a_rerun_older_date_puts_its_own_entities_online_and_keeps_newer_rows(
    spark, lake, monkeypatch, request, environment
):
    """A late file for an older date, rerun as that date: a user whom only that date holds was never materialized
    (only the newest date is published again), and the consistency check failed the run."""
    with contextlib.ExitStack() as stack:
        if environment == "production":
            request.getfixturevalue("postgres"), request.getfixturevalue("redis")
            stack.enter_context(production(monkeypatch, redis_db=5))
        write_gold(spark, [user_row(7, 1, "loyal"), user_row(7, 2, "champions")], [item_row(10, 2, 5.0)])
        feature_store.publish(spark)
        rerun = spark.createDataFrame([user_row(7, 1, "browsers"), user_row(9, 1, "new")], USER_FEATURES.schema)
        storage.write_table(rerun, USER_FEATURES, "overwrite_partitions", partitions=[{"as_of_date": dt.date(2019, 10, 1)}],
                            run_id="t")  # fmt: skip

        feature_store.publish(spark)
        store = feature_store.get_store()
        assert feature_store.online_features(store, ["user_profile:segment"], [{"user_id": 9}])["segment"] == [None]
        with pytest.raises(feature_store.FeatureStoreError, match="user_id=9"):
            feature_store.check_consistency(spark, store)

        done = feature_store.publish(spark, since=dt.date(2019, 10, 1))
        second = dt.timedelta(seconds=1)
        window = (end_of(1).replace(tzinfo=dt.UTC) - second, end_of(2).replace(tzinfo=dt.UTC) + second)
        assert {(m.start, m.end) for m in done if m.view == "user_profile"} == {window}
        store = feature_store.get_store()
        online = feature_store.online_features(store, ["user_profile:segment"], [{"user_id": 9}, {"user_id": 7}])
        assert online["segment"] == ["new", "champions"]  # user 7's newer row still wins
        feature_store.check_consistency(spark, store)


def test_feast_reads_a_tables_delta_snapshot_not_the_files_it_replaced(spark, lake):
    """A failed gate or a trial leaves its rejected files in the table's folder (the restore only drops them from the
    log), with the newest created_timestamp. Feast's file store read every file there, so those rows won."""
    from pyspark.sql import functions as F

    from shoplake.delta_offline_store import DeltaFileOfflineStore

    write_gold(spark, [user_row(7, 1, "loyal")], [item_row(10, 1, 5.0)])
    good = storage.table_version(USER_FEATURES)
    rejected = spark.createDataFrame([user_row(7, 1, "champions")], USER_FEATURES.schema).withColumn(
        "created_timestamp", F.lit(AT + dt.timedelta(hours=1))
    )
    storage.write_table(rejected, USER_FEATURES, "overwrite_partitions", partitions=[{"as_of_date": dt.date(2019, 10, 1)}],
                        run_id="rejected")  # fmt: skip
    storage.restore_table(USER_FEATURES, good)
    assert len(list((lake / "lake" / "user_features").rglob("*.parquet"))) == 2  # the rejected file is still there

    feature_store.publish(spark)
    store = feature_store.get_store()
    assert isinstance(store._get_provider().offline_store, DeltaFileOfflineStore)
    assert feature_store.online_features(store, ["user_profile:segment"], [{"user_id": 7}])["segment"] == ["loyal"]
    an_hour_later = pd.Timestamp(end_of(1), tz="UTC") + pd.Timedelta(hours=1)
    views = pd.DataFrame({"user_id": [7], "event_timestamp": [an_hour_later]})
    got = feature_store.historical_features(spark, store, views, ["user_profile:segment"])
    assert got["user_profile__segment"].tolist() == ["loyal"]


def test_feast_reads_only_the_rows_and_columns_each_job_keeps(spark, lake, monkeypatch):
    """Feast's file store read every gold date a source ever held, for each view, and only then kept a window:
    publishing and training sets grew with the shop's history. Each read now takes only what the job keeps, as
    does the online writer's."""
    from feast.infra.offline_stores import dask as feast_dask

    write_gold(
        spark, [user_row(7, d, f"day {d}") for d in (1, 2, 3)] + [user_row(8, 1, "loyal")], [item_row(10, 1, 5.0)]
    )
    feature_store.publish(spark)  # the first publish: every date, into an empty online store
    store = feature_store.get_store()
    reads: list[tuple[str, pd.DataFrame]] = []
    read = feast_dask._read_datasource

    def recording(source, repo_path):
        frame = read(source, repo_path)
        reads.append((source.name, frame.compute()))
        return frame

    read_arrow, tables = storage.read_arrow, []

    def recording_arrow(table, columns, version=None, where=None):
        tables.append((table, got := read_arrow(table, columns, version, where)))
        return got

    monkeypatch.setattr(storage, "read_arrow", recording_arrow)
    feature_store.publish(spark)  # the newest date again (the online writer): only its rows
    user_reads = [
        rows.column("event_timestamp").to_pylist()
        for table, rows in tables
        if table == "user_features" and "segment" in rows.column_names
    ]  # not the feature time range's read
    assert user_reads and all(set(times) == {end_of(3).replace(tzinfo=dt.UTC)} for times in user_reads)

    monkeypatch.setattr(feast_dask, "_read_datasource", recording)
    newest, second = end_of(3).replace(tzinfo=dt.UTC), dt.timedelta(seconds=1)
    # Feast's own materialization (`feast materialize`; views the online writer does not take): the window's
    # rows, the view's columns
    store.materialize(start_date=newest - second, end_date=newest + second, feature_views=["user_profile"])
    profile = [f.name for f in store.get_feature_view("user_profile").features]
    users = [frame for name, frame in reads if name == "user_features_source"]
    assert users and all(set(f["event_timestamp"]) == {pd.Timestamp(end_of(3), tz="UTC")} for f in users)
    assert any(set(f.columns) == {"user_id", "event_timestamp", *profile} for f in users)

    reads.clear()  # a training view an hour into day 3 (end of day 2): user_profile's 3-day TTL reaches day 1
    views = pd.DataFrame({"user_id": [7, 8], "event_timestamp": [end_of(2) + dt.timedelta(hours=1)] * 2})
    got = feature_store.historical_features(spark, store, views, ["user_profile:segment"])
    assert got["user_profile__segment"].tolist() == ["day 2", "loyal"]
    read_times = {t for _, f in reads for t in f["event_timestamp"]}
    assert read_times == {pd.Timestamp(end_of(d), tz="UTC") for d in (1, 2)}  # never day 3, after the views
    assert set(reads[0][1].columns) == {"user_id", "event_timestamp", *profile}
    too_late = views.assign(event_timestamp=end_of(9))  # beyond every row's TTL: nothing read, null features
    assert feature_store.historical_features(spark, store, too_late, ["user_profile:segment"])[
        "user_profile__segment"
    ].tolist() == [None, None]

    from shoplake.delta_offline_store import historical_reads

    no_expiry = historical_reads([store.get_feature_view("item_embedding")], views.assign(item_id=10))
    assert no_expiry["item_embeddings_source"].since is None  # an embedding has no TTL: every earlier row counts
    assert historical_reads([store.get_feature_view("user_profile")], None) == {}  # no entity rows: a whole read


def test_the_writers_scalars_and_sqlite_texts_are_what_feast_converts():
    """Each scalar kind from its Arrow column — nulls, NaN, a double in a float field, an integer in a double field
    — gives the bytes of the ``ValueProto`` Feast's type mapping builds, and SQLite's ``value_text`` Feast derives."""
    import pyarrow as pa
    from feast.infra.online_stores.helpers import extract_text_and_num
    from feast.utils import _columns_to_proto_values
    from feast.value_type import ValueType

    columns = [
        (ValueType.DOUBLE, pa.array([0.1, None, float("nan"), -2.5e300, 3.0], pa.float64())),
        (ValueType.DOUBLE, pa.array([5, None, -7], pa.int64())),
        (ValueType.FLOAT, pa.array([0.1, None, float("nan"), 1e-30], pa.float64())),
        (ValueType.INT64, pa.array([7, None, -(2**62)], pa.int64())),
        (ValueType.INT64, pa.array([3, None], pa.int32())),
        (ValueType.INT32, pa.array([3, None, -9], pa.int32())),
        (ValueType.STRING, pa.array(["kids.toys", None, "", "café ☕"], pa.string())),
        (ValueType.BOOL, pa.array([True, None, False], pa.bool_())),
    ]
    for kind, column in columns:
        feasts = _columns_to_proto_values(pa.record_batch({"v": column}), [("v", kind)])["v"]  # materialize's path
        assert online_writer._encoded(column, kind, online_writer._encoders()[kind]) == [
            v.SerializeToString() for v in feasts
        ], kind
        assert online_writer._texts(column, kind) == [extract_text_and_num(v, False)[0] for v in feasts], kind


def test_the_writers_packed_lists_are_the_bytes_protobuf_serializes():
    """Float and double lists framed from Arrow's buffer equal ``ValueProto.SerializeToString`` — null, empty,
    one-element and long lists (multi-byte length prefixes), in a sliced batch as ``write_views`` reads them."""
    import math

    import pyarrow as pa
    from feast.value_type import ValueType

    lists = [[1.5, -2.25], None, [], [math.pi], [0.1 * n for n in range(300)], [float("inf"), -0.0]]
    for kind, arrow in ((ValueType.FLOAT_LIST, pa.float32()), (ValueType.DOUBLE_LIST, pa.float64())):
        column = pa.array([[0.0]] + lists, pa.list_(arrow)).slice(1)
        encode = online_writer._encoders()[kind]
        assert online_writer._encoded(column, kind, encode) == [b"" if v is None else encode(v) for v in lists]
    with_null_element = pa.array([[1.0, None]], pa.list_(pa.float64()))
    with pytest.raises(TypeError):  # Feast cannot encode a null element either; the writer does not hide it
        online_writer._encoded(
            with_null_element, ValueType.DOUBLE_LIST, online_writer._encoders()[ValueType.DOUBLE_LIST]
        )


def test_response_values_equal_feasts_to_dict_for_every_kind_of_value():
    from feast.online_response import OnlineResponse
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
    from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, StringList, Value
    from feast.value_type import ValueType

    columns = {
        "count": [Value(int64_val=3), Value()],
        "name": [Value(string_val="kids.toys"), Value(string_val="")],
        "embedding": [Value(float_list_val=FloatList(val=[0.25, -1.5])), Value()],
        "ids": [Value(int64_list_val=Int64List(val=[1, 2])), Value(int64_list_val=Int64List())],
        "seen_at": [Value(unix_timestamp_val=1_570_000_000), Value()],  # Feast makes it a datetime
        "order_uuid": [Value(string_val="12345678-1234-5678-1234-567812345678"), Value()],  # hinted: a UUID
        "tags": [Value(string_list_val=StringList(val=["a", "b"])), Value()],
    }
    proto = GetOnlineFeaturesResponse()
    proto.metadata.feature_names.val.extend(columns)
    for values in columns.values():
        proto.results.add(values=values, statuses=[FieldStatus.PRESENT] * len(values))
    response = OnlineResponse(proto, feature_types={"order_uuid": ValueType.UUID, "count": ValueType.INT64})
    values = feature_store.response_values(response)
    assert values == response.to_dict()
    assert values["embedding"] == [[0.25, -1.5], None] and isinstance(values["order_uuid"][0], uuid.UUID)


def test_a_changed_online_value_fails_the_consistency_check(spark, lake):
    write_gold(spark, [user_row(7, 1, "browsers")], [item_row(10, 1, 5.0)])
    feature_store.publish(spark)
    store = feature_store.get_store()
    tampered = storage.read_table(spark, USER_FEATURES).toPandas()
    tampered["segment"] = "champions"
    tampered["event_timestamp"] = tampered["event_timestamp"].dt.tz_localize("UTC")
    store.write_to_online_store("user_profile", tampered)
    with pytest.raises(feature_store.FeatureStoreError, match="user_profile user_id=7 segment: online 'champions'"):
        feature_store.check_consistency(spark, store)


@pytest.mark.parametrize("environment", ["local", "production"])
def test_training_joins_are_point_in_time_correct(spark, lake, monkeypatch, request, environment):
    """The same answers from Feast's file offline store (local) and its Spark offline store (production)."""
    with contextlib.ExitStack() as stack:
        if environment == "production":
            request.getfixturevalue("postgres"), request.getfixturevalue("redis")
            stack.enter_context(production(monkeypatch, redis_db=6))
        # user 7 is "browsers" as of the end of Oct 1 and "champions" as of the end of Oct 2; item 10 costs 5 then 8
        write_gold(spark, [user_row(7, 1, "browsers"), user_row(7, 2, "champions"), user_row(8, 2, "loyal", 20.0)],
                   [item_row(10, 1, 5.0), item_row(10, 2, 8.0), item_row(11, 1, 3.0)])  # fmt: skip
        store = feature_store.get_store()
        feature_store.apply(store)
        times = ["2019-10-01 12:00", "2019-10-02 00:00", "2019-10-02 23:59", "2019-10-03 08:00", "2019-10-09 00:00"]
        entity_df = pd.DataFrame({
            "user_id": [7, 7, 7, 7, 7, 999, 7, 8], "item_id": [10, 10, 10, 10, 10, 10, 11, 10],
            "label": [0, 1, 0, 1, 0, 1, 0, 1],
            "event_timestamp": pd.to_datetime([*times, "2019-10-02 12:00", *["2019-10-03 08:00"] * 2]).tz_localize("UTC"),
        })  # fmt: skip
        joined = feature_store.historical_features(
            spark,
            store,
            entity_df,
            ["user_profile:segment", "item_stats:price_mean", "price_for_user:price_to_user_average"],
        )
        assert len(joined) == 8  # every entity row kept
        segments = ["browsers", "browsers", "champions", None, None, "champions", "loyal"]
        assert joined["user_profile__segment"].tolist() == [None, *segments]
        #  before any feature time: nothing; at and after Oct 1's end: Oct 1's value, never Oct 2's before its end;
        #  6 days after the last feature time the 3-day TTL has passed; an unknown user gets nulls. The last two rows
        #  share a time with the fourth: the same user with another item, another user with the same item; each gets
        #  its own features (Feast's file store answers only one row of a shared entity and time)
        prices = joined["item_stats__price_mean"].tolist()
        assert pd.isna(prices[0]) and prices[1:4] == [5.0, 5.0, 8.0] and pd.isna(prices[4]) and prices[5:] == [5, 3, 8]
        relative = joined["price_for_user__price_to_user_average"].tolist()
        assert relative[1:4] == pytest.approx([0.5, 0.5, 0.8]) and relative[6:] == pytest.approx([0.3, 0.4])
        assert joined["label"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


@contextlib.contextmanager
def production(monkeypatch, redis_db: int):
    """The production environment: a fresh PostgreSQL registry database and an empty Redis database."""
    import psycopg
    import redis as redis_client

    database = f"shoplake_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        monkeypatch.setenv("SHOPLAKE_FEAST_ENV", "production")
        monkeypatch.setenv("SHOPLAKE_FEAST_REGISTRY_URL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
        monkeypatch.setenv("SHOPLAKE_FEAST_REDIS", f"127.0.0.1:6379,db={redis_db}")
        get_settings.cache_clear()
        client = redis_client.Redis(db=redis_db)
        client.flushdb()
        yield client
    finally:
        get_settings.cache_clear()
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_production_environment_on_postgres_and_redis(spark, lake, monkeypatch, postgres, redis):
    with production(monkeypatch, redis_db=9):
        write_gold(spark, [user_row(7, 1, "browsers"), user_row(8, 1, "loyal")], [item_row(10, 1, 5.0)])
        done = feature_store.publish(spark)
        assert "user_profile" in {m.view for m in done}
        store = feature_store.get_store()
        online = feature_store.online_features(store, store.get_feature_service("marketing_analytics_v1"),
                                               [{"user_id": 8}, {"user_id": 404}])  # fmt: skip
        assert online["segment"] == ["loyal", None]
        assert feature_store.check_consistency(spark, store)["user_profile"] == 2
        # the Spark offline store reads the same Delta snapshots through the views the storage layer registers;
        # a process that did not publish (the CLI's training-set, an Airflow task) has none registered yet
        for view in spark.catalog.listTables():
            if view.isTemporary and view.name.startswith("shoplake_"):
                spark.catalog.dropTempView(view.name)
        joined = feature_store.historical_features(spark, store, pd.DataFrame({
            "user_id": [7], "item_id": [10], "event_timestamp": pd.to_datetime(["2019-10-02 06:00"]).tz_localize("UTC"),
        }), ["user_profile:segment"])  # fmt: skip
        assert joined["user_profile__segment"].tolist() == ["browsers"]

        monkeypatch.setenv("SHOPLAKE_FEAST_REDIS", "127.0.0.1:1,db=9")  # nothing listens there
        get_settings.cache_clear()
        down = feature_store.get_store()
        with pytest.raises(feature_store.FeatureStoreError, match="unreachable after 3 attempts"):
            feature_store.online_features(down, ["user_profile:segment"], [{"user_id": 8}])


def online_contents(store, client=None) -> dict:
    """Everything the online store holds, as stored: Redis hashes by key, or SQLite rows by view table."""
    if client is not None:
        return {key: client.hgetall(key) for key in client.keys("*")}
    import sqlite3

    with contextlib.closing(sqlite3.connect(store.config.online_store.path)) as db:  # no type conversion: raw values
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY entity_key, feature_name").fetchall() for t in tables}


def clear_online(store, client=None) -> None:
    if client is not None:
        client.flushdb()
        return
    import sqlite3

    with contextlib.closing(sqlite3.connect(store.config.online_store.path)) as db, db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            db.execute(f"DELETE FROM {table}")


@pytest.mark.parametrize("environment", ["local", "production"])
def test_the_bulk_online_writer_writes_byte_for_byte_what_feast_materialize_writes(
    spark, lake, monkeypatch, request, environment
):
    """Every view, with nulls, a NaN, lists, strings and two feature dates (the latest row per entity wins), on
    SQLite and on Redis."""
    with contextlib.ExitStack() as stack:
        client = None
        if environment == "production":
            request.getfixturevalue("postgres"), request.getfixturevalue("redis")
            client = stack.enter_context(production(monkeypatch, redis_db=8))
        write_gold(spark, [user_row(7, 1, "browsers"), user_row(7, 2, "loyal", monetary=12.5),
                           user_row(8, 1, "new", monetary=float("nan"))],
                   [item_row(10, 1, 5.0), item_row(11, 2, 8.0)])  # fmt: skip
        popular = [row(CATEGORY_POPULAR, category=c, item_ids=ids, event_timestamp=end_of(1), created_timestamp=AT,
                       as_of_date=dt.date(2019, 10, 1)) for c, ids in (("(all)", [11, 10]), ("café.outils", [10]))]  # fmt: skip
        storage.write_table(spark.createDataFrame(popular, CATEGORY_POPULAR.schema), CATEGORY_POPULAR, "append",
                            run_id="t")  # fmt: skip
        done = feature_store.publish(spark)
        store = feature_store.get_store()
        assert all(online_writer.supports(v, store.config.online_store) for v in store.list_feature_views())
        assert len(done) == 8  # every view, category_popular's string keys too
        ours = online_contents(store, client)
        clear_online(store, client)
        for m in done:
            store.materialize(start_date=m.start, end_date=m.end, feature_views=[m.view])
        feasts = online_contents(store, client)
        assert ours == feasts
        if client is not None:
            assert len(ours) == 6  # users 7 and 8, items 10 and 11, two categories
        else:
            assert len(ours["shoplake_user_profile"]) == 2 * 9 and len(ours["shoplake_item_embedding"]) == 2 * 2
        online = feature_store.online_features(store, ["user_profile:monetary"], [{"user_id": 8}, {"user_id": 7}])
        assert online["monetary"] == [None, 12.5]  # Feast stores a NaN as the empty value: null online
        online = feature_store.online_features(store, ["category_popular:item_ids"], [{"category": "café.outils"}])
        assert online["item_ids"] == [[10]]

        # the next publish writes the new feature date past each view's recorded window, and each other gold
        # view's newest date again (it may have been rerun); embeddings only when new ones exist
        storage.write_table(spark.createDataFrame([user_row(8, 3, "champions")], USER_FEATURES.schema),
                            USER_FEATURES, "append", run_id="t")  # fmt: skip
        again = {m.view: (m.start, m.end) for m in feature_store.publish(spark)}
        second = dt.timedelta(seconds=1)
        new_date, items_newest = end_of(3).replace(tzinfo=dt.UTC), end_of(2).replace(tzinfo=dt.UTC)
        for view in ("user_profile", "user_activity", "user_category_affinity"):
            assert again[view] == (items_newest + second, new_date + second)
        assert again["item_stats"] == (items_newest - second, items_newest + second)
        assert "item_embedding" not in again
        online = feature_store.online_features(store, ["user_profile:segment"], [{"user_id": 8}, {"user_id": 7}])
        assert online["segment"] == ["champions", "loyal"]


@pytest.mark.parametrize("environment", ["local", "production"])
def test_shoplakes_online_stores_answer_exactly_what_feasts_stores_answer(
    spark, lake, monkeypatch, request, environment
):
    """The same response proto (values, statuses, feature times) from Feast's stock SQLite and Redis stores and
    from the leaner reads: feature services with an on-demand view, views of two entities in one request, repeated
    and unknown entities, full feature names."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    from shoplake.redis_online_store import ShoplakeRedisOnlineStore
    from shoplake.sqlite_online_store import ShoplakeSqliteOnlineStore

    with contextlib.ExitStack() as stack:
        if environment == "production":
            request.getfixturevalue("postgres"), request.getfixturevalue("redis")
            stack.enter_context(production(monkeypatch, redis_db=7))
        write_gold(spark, [user_row(7, 1, "browsers"), user_row(7, 2, "loyal", monetary=12.5), user_row(8, 1, "new")],
                   [item_row(10, 1, 5.0), item_row(11, 2, 8.0)])  # fmt: skip
        feature_store.publish(spark)
        ours = feature_store.get_store()
        config = ours.config
        if environment == "production":
            assert isinstance(ours._get_provider().online_store, ShoplakeRedisOnlineStore)
            feasts = {"type": "redis", "connection_string": get_settings().feast_redis}
        else:
            assert isinstance(ours._get_provider().online_store, ShoplakeSqliteOnlineStore)
            feasts = {"type": "sqlite", "path": config.online_store.path}
        stock = FeatureStore(config=RepoConfig(
            project=config.project, provider="local", registry=config.registry, repo_path=str(config.repo_path),
            entity_key_serialization_version=config.entity_key_serialization_version, offline_store={"type": "file"},
            online_store=feasts,
        ))  # fmt: skip
        assert type(stock._get_provider().online_store).__name__ in ("RedisOnlineStore", "SqliteOnlineStore")

        recommender = ours.get_feature_service("recommender_v1")
        both = [{"user_id": u, "item_id": i} for u, i in ((7, 10), (8, 11), (7, 11), (404, 10), (7, 999), (7, 10))]
        requests = [
            (recommender, both, False),
            (recommender, both, True),
            (ours.get_feature_service("marketing_analytics_v1"), [{"user_id": u} for u in (8, 7, 8, 404)], False),
            (["item_stats:price_mean", "item_embedding:embedding", "item_neighbors:neighbor_ids"],
             [{"item_id": i} for i in (11, 10, 12, 10)], False),
            (["user_profile:segment", "item_stats:popularity_rank"], both, True),
        ]  # fmt: skip
        for features, rows, full in requests:
            theirs = stock.get_online_features(features=features, entity_rows=rows, full_feature_names=full)
            leaner = ours.get_online_features(features=features, entity_rows=rows, full_feature_names=full)
            assert leaner.proto == theirs.proto
            assert leaner.to_dict() == theirs.to_dict()
        assert feature_store.online_features(ours, ["user_profile:segment"], [{"user_id": 7}])["segment"] == ["loyal"]


def test_ranking_metrics_by_hand(spark):
    from spark_jobs.evaluation import transform_ranked_metrics

    ranked = spark.createDataFrame(
        [(1, 10, 1), (1, 11, 2), (1, 12, 3), (2, 20, 1)], "user_id long, item_id long, rank int"
    )
    relevant = spark.createDataFrame([(1, 11), (1, 99), (2, 21)], "user_id long, item_id long")
    got = {r.user_id: r for r in transform_ranked_metrics(ranked, relevant, 3, "m").collect()}
    # user 1: one hit of two relevant at rank 2 → recall 1/2, DCG 1/log2(3), IDCG 1 + 1/log2(3)
    assert got[1].m_recall == pytest.approx(0.5)
    assert got[1].m_ndcg == pytest.approx((1 / 1.5849625) / (1 + 1 / 1.5849625), rel=1e-6)
    assert (got[1].m_hit_rate, got[2].m_recall, got[2].m_ndcg, got[2].m_hit_rate) == (1.0, 0.0, 0.0, 0.0)


def test_the_evaluation_makes_up_short_lists_as_the_online_recommender_does(spark):
    from spark_jobs.evaluation import transform_popular_fill

    users = spark.createDataFrame([(1,), (2,), (3,)], "user_id long")
    affinity = spark.createDataFrame(
        [(1, ["kids.toys", "home"]), (3, ["home"])], "user_id long, top_categories array<string>"
    )
    popular = spark.createDataFrame(
        [("kids.toys", [10, 11, 12]), ("home", [20, 10, 21]), ("(all)", [30, 10, 20, 31])],
        "category string, item_ids array<long>",
    )
    taken = spark.createDataFrame([(1, 11), (1, 30)], "user_id long, item_id long")  # bought, or already in the CF list
    got = transform_popular_fill(users, affinity, popular, taken, 4).orderBy("user_id", "rank").collect()
    lists = {u: [r.item_id for r in got if r.user_id == u] for u in (1, 2, 3)}
    # user 1: kids.toys without 11, then home without 10 (already offered); user 2 knows no category: the shop's;
    # user 3: home, then the shop's without 10 and 20
    assert lists == {1: [10, 12, 20, 21], 2: [30, 10, 20, 31], 3: [20, 10, 21, 30]}
    assert [r.rank for r in got if r.user_id == 1] == [1, 2, 3, 4]


def test_an_evaluation_without_users_on_both_sides_of_the_split_measures_nothing(spark, lake):
    from shoplake import orchestration
    from shoplake.catalog import SILVER_EVENTS
    from spark_jobs import items

    day = dt.date(2019, 10, 1)
    times = [dt.datetime(2019, 10, 1, 10), dt.datetime(2019, 10, 1, 11)]  # user 1 before the split, user 2 after
    rows = [(f"e{u}", t, "view", 100 + u, None, "kids.toys", "b", 5.0, u, "s", "s", False, "f", u, "c", "r", t, day)
            for u, t in zip((1, 2), times, strict=True)]  # fmt: skip
    events = spark.createDataFrame(rows, SILVER_EVENTS.schema)
    storage.write_table(events, SILVER_EVENTS, "append", run_id="t")
    items.refresh_items_from_events(spark, events, run_id="t", updated_at=AT)
    step = orchestration.evaluate_recommender(day, "eval-empty")
    assert step.outputs == {"users": 0, "k": 20}
    assert step.lines[0].startswith("evaluation: nothing measured; no user has events both before and after")


def test_the_recommender_scores_by_the_cf_formula_online_and_cold_starts(spark, lake):
    from shoplake.catalog import CATEGORY_POPULAR
    from shoplake.recommender import recommend

    day = dt.date(2019, 10, 1)
    stamp = {"event_timestamp": end_of(1), "created_timestamp": AT, "as_of_date": day}
    rows = {
        USER_ITEMS: [row(USER_ITEMS, user_id=7, item_ids=[1, 2], item_scores=[2.0, 1.0], bought_item_ids=[3], **stamp)],
        ITEM_NEIGHBORS: [
            row(ITEM_NEIGHBORS, item_id=1, neighbor_ids=[3, 4, 5], neighbor_weights=[0.9, 0.5, 0.1], **stamp),
            row(ITEM_NEIGHBORS, item_id=2, neighbor_ids=[4, 5], neighbor_weights=[0.2, 0.8], **stamp),
            row(ITEM_NEIGHBORS, item_id=4, neighbor_ids=[1, 2], neighbor_weights=[0.5, 0.2], **stamp),
            row(ITEM_NEIGHBORS, item_id=5, neighbor_ids=[2, 1], neighbor_weights=[0.8, 0.1], **stamp),
        ],
        USER_FEATURES: [user_row(7, 1, "loyal")],
        CATEGORY_POPULAR: [row(CATEGORY_POPULAR, category="kids.toys", item_ids=[3, 4, 40], **stamp),
                           row(CATEGORY_POPULAR, category="(all)", item_ids=[41, 50, 51], **stamp)],
    }  # fmt: skip
    for spec, data in rows.items():
        storage.write_table(spark.createDataFrame(data, spec.schema), spec, "append", run_id="t")
    feature_store.publish(spark)
    store = feature_store.get_store()
    got = recommend(store, 7, 5)
    # score(u, i) = Σ_{j∈N(i)} w_ij r(u, j): item 4 = 0.5·2 + 0.2·1 = 1.2; item 5 = 0.8·1 + 0.1·2 = 1.0;
    # item 3 was bought; no embeddings, so the blend is (1 − β)·CF / max CF
    assert got.strategy == "cf+embedding"
    assert [(s.item_id, s.cf) for s in got.items[:2]] == [(4, pytest.approx(1.2)), (5, pytest.approx(1.0))]
    assert got.items[0].score == pytest.approx(0.7) and got.items[1].score == pytest.approx(0.7 * 1.0 / 1.2)
    # CF finds two items; popular ones make up k = 5: the user's top category first (3 bought, 4 already
    # recommended), then the shop's
    assert [(s.item_id, s.source) for s in got.items[2:]] == [(40, "popular"), (41, "popular"), (50, "popular")]
    assert [s.score for s in got.items[2:]] == [0.0, 0.0, 0.0]
    cold = recommend(store, 12345, 3)
    assert cold.strategy == "cold_start" and [s.item_id for s in cold.items] == [41, 50, 51]
    assert len(recommend(store, 7, 1).items) == 1 and len(recommend(store, 12345, 1).items) == 1
    with pytest.raises(ShoplakeError, match="k must be at least 1"):
        recommend(store, 7, 0)


def test_an_empty_lake_publishes_nothing_and_an_unpublished_store_says_so(spark, lake):
    """Before, publish on an empty lake said every view was up to date and online = offline "for" nothing, and
    recommend died in Feast's FeatureViewNotFoundException traceback."""
    from shoplake.recommender import recommend

    with pytest.raises(ShoplakeError, match="user_history does not exist .*: publish the features first"):
        recommend(feature_store.get_store(), 7, 5)
    with pytest.raises(ShoplakeError, match="nothing to publish: gold has not been computed yet"):
        feature_store.publish(spark)
    from shoplake.errors import DataError
    from shoplake.marketing import build_report

    with pytest.raises(DataError, match="user_features is empty"):  # the marketing DAG fails it without retries
        build_report(spark)


def test_the_marketing_report_reads_the_feature_service(spark, lake):
    from shoplake.marketing import audience_stem, build_report

    users = [user_row(7, 1, "at_risk", monetary=90.0), user_row(8, 1, "champions", monetary=10.0),
             user_row(9, 1, "at_risk", monetary=30.0),
             user_row(10, 1, "about_to_sleep", monetary=0.0, category="home & garden/tools.drills")]  # fmt: skip
    write_gold(spark, users, [item_row(10, 1, 5.0)])
    feature_store.publish(spark)
    folder = lake / "reports" / "marketing" / "audiences"
    folder.mkdir(parents=True)
    (folder / "win_back_toys.csv").write_text("user_id\n42\n")  # an earlier report's audience
    report = build_report(spark)
    assert report.users == 4 and report.segments == {"at_risk": 2, "champions": 1, "about_to_sleep": 1}
    # a category that is no file name gets a safe one; the earlier report's audience is gone
    odd = audience_stem("home & garden/tools")
    assert re.fullmatch(r"win_back_home_garden_tools_[0-9a-f]{8}", odd)
    assert report.audiences == {"win_back_kids": 2, odd: 1}
    written = sorted(f"{stem}.{kind}" for stem in report.audiences for kind in ("csv", "parquet"))
    assert sorted(p.name for p in folder.iterdir()) == written
    audience = pd.read_csv(folder / "win_back_kids.csv")
    assert audience["user_id"].tolist() == [7, 9]  # biggest spenders first
    assert pd.read_parquet(folder / f"{odd}.parquet")["category_l1"].tolist() == ["home & garden/tools"]
    page = report.page.read_text()
    assert "Revenue share by segment" in page and "<svg" in page and "92.3 %" in page  # at_risk: (90 + 30) ÷ 130


def test_a_training_set_gets_point_in_time_features_and_passes_its_gate(spark, lake):
    from shoplake.catalog import SILVER_EVENTS
    from spark_jobs.training_set import build_training_set

    write_gold(spark, [user_row(7, 1, "browsers"), user_row(8, 1, "loyal")], [item_row(10, 1, 5.0)])
    events = [  # views on Oct 2 (features of Oct 1 exist then); user 7 buys item 10 two hours after viewing it
        (f"e{n}", t, kind, 10, 1, "kids.toys", "lego", 5.0, user, f"s{user}", f"s{user}", False, "f", n, "c", "r", AT,
         dt.date(2019, 10, 2))
        for n, (user, kind, t) in enumerate([(7, "view", dt.datetime(2019, 10, 2, 9)),
                                             (7, "purchase", dt.datetime(2019, 10, 2, 11)),
                                             (8, "view", dt.datetime(2019, 10, 2, 12))])
    ]  # fmt: skip
    storage.write_table(spark.createDataFrame(events, SILVER_EVENTS.schema), SILVER_EVENTS, "append", run_id="t")
    feature_store.apply(feature_store.get_store())
    result = build_training_set(spark, dt.date(2019, 10, 2), dt.date(2019, 10, 2), name="t")
    frame = pd.read_parquet(result.path).sort_values("user_id")
    assert (result.rows, result.positives) == (2, 1)
    assert frame["label"].tolist() == [1, 0] and frame["user_profile__segment"].tolist() == ["browsers", "loyal"]

    # views five days later: gold has no features as of the day before them, and the gate's error says how to fix it
    late = [(f"x{n}", dt.datetime(2019, 10, 6, 9 + n), "view", 10, 1, "kids.toys", "lego", 5.0, user, f"t{user}",
             f"t{user}", False, "f", n, "c", "r", AT, dt.date(2019, 10, 6)) for n, user in enumerate((7, 8))]  # fmt: skip
    storage.write_table(spark.createDataFrame(late, SILVER_EVENTS.schema), SILVER_EVENTS, "append", run_id="t")
    no_gold = r"gold has no features as of 2019-10-05; `shoplake gold --date 2019-10-05`"
    with pytest.raises(ShoplakeError, match=no_gold):
        build_training_set(spark, dt.date(2019, 10, 6), dt.date(2019, 10, 6), name="t")
    assert result.path.is_file()  # the earlier set stays as it was
    # a set opening on the shop's first day of events: no features can precede its views (gold as of the day
    # before would be empty), so the hint asks for a later start, not for that gold; the error gives each sparse
    # column's null rate, once, instead of 20 sampled nulls per column
    first = [(f"f{n}", dt.datetime(2019, 10, 1, 9 + n), "view", 10 + n, 1, "kids.toys", "lego", 5.0, user, f"u{user}",
              f"u{user}", False, "f", n, "c", "r", AT, dt.date(2019, 10, 1)) for n, user in enumerate((7, 8, 9))]  # fmt: skip
    storage.write_table(spark.createDataFrame(first, SILVER_EVENTS.schema), SILVER_EVENTS, "append", run_id="t")
    with pytest.raises(ShoplakeError) as refused:
        build_training_set(spark, dt.date(2019, 10, 1), dt.date(2019, 10, 2), name="t")
    message = str(refused.value)
    assert re.search(r"\d+ feature columns are null in more than 50% of the rows: user_profile__segment 60%, ", message)
    assert "sample: [None" not in message
    assert message.endswith("(views on 2019-10-01, the first day of events, have no earlier features: start the set "
                            "on 2019-10-02 or later)")  # fmt: skip
    for name in ("../outside", "a/b", ".hidden", ""):  # a name is a file name under exports, refused up front
        with pytest.raises(ShoplakeError, match="it names a file"):
            build_training_set(spark, dt.date(2019, 10, 2), dt.date(2019, 10, 2), name=name)
