"""Online feature serving and publishing, on SQLite and Redis: Feast retrieval against Feast's stock stores.

Retrieval of ``recommender_v1``-shaped requests is timed against Feast's stock stores and (Redis) the raw read of
the same keys; publishing against Feast's own materialization and (Redis) a raw pipelined write; all in one run.

A request is what the reference recommender asks for one user and 100 candidate items: the user's features
(profile, history, category affinity) and the items' features (stats, embedding, neighbours). The same requests
also go through Feast's stock ``SqliteOnlineStore`` and ``RedisOnlineStore`` (shoplake's stores are subclasses of
them with leaner reads, ``shoplake.sqlite_online_store`` and ``shoplake.redis_online_store``). Floor for Redis:
one pipelined HGETALL per key of the same hash keys Feast reads (the floor a store client can reach). Publishing is
timed against Feast's own materialization of the same windows (``feasts_materialization``). Published
anchors: Feast's Python feature server p99 ≈ 125 ms, its Go server p99 ≈ 22 ms, for 100 entities × 50 features.

Run: ``python -m bench.feature_serving --users 20000 --items 50000 --calls 1000`` (needs Redis and PostgreSQL on
127.0.0.1 for the production rows).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import RESULTS

AT = dt.datetime(2026, 1, 1)


def write_gold(spark, users: int, items: int, dim: int, days: int = 1) -> None:
    """Synthetic gold tables of the given size: every user and item on each of ``days`` feature dates from
    2019-10-01 (embeddings once)."""
    from pyspark.sql import functions as F

    from shoplake import storage
    from shoplake.catalog import ITEM_EMBEDDINGS, ITEM_FEATURES, ITEM_NEIGHBORS, USER_FEATURES, USER_ITEMS

    day = F.date_add(F.lit(dt.date(2019, 10, 1)), F.col("_day").cast("int"))
    stamp = [F.date_add(day, 1).cast("timestamp").alias("event_timestamp"), F.lit(AT).alias("created_timestamp"),
             day.alias("as_of_date")]  # fmt: skip
    dates = spark.range(days).withColumnRenamed("id", "_day")

    def fill(spec, df):
        present = set(df.columns)
        return df.select(*[F.col(c) if c in present else F.lit(None).cast(spec.schema[c].dataType).alias(c)
                           for c in spec.columns])  # fmt: skip

    u = spark.range(users).withColumnRenamed("id", "user_id").crossJoin(dates)
    storage.write_table(fill(USER_FEATURES, u.select("user_id", F.lit("loyal").alias("segment"),
        (F.col("user_id") % 5 + 1).cast("int").alias("r_score"), F.array(F.lit("kids.toys")).alias("top_categories"),
        F.array(F.lit(1.0)).alias("top_category_shares"), *stamp)), USER_FEATURES, "overwrite", run_id="b")  # fmt: skip
    storage.write_table(fill(USER_ITEMS, u.select("user_id",
        F.transform(F.sequence(F.lit(0), F.lit(19)), lambda x: (F.col("user_id") * 7 + x) % items).alias("item_ids"),
        F.array_repeat(F.lit(1.0), 20).alias("item_scores"), F.array().cast("array<long>").alias("bought_item_ids"),
        *stamp)), USER_ITEMS, "overwrite", run_id="b")  # fmt: skip
    i = spark.range(items).withColumnRenamed("id", "item_id").crossJoin(dates)
    storage.write_table(fill(ITEM_FEATURES, i.select("item_id", (F.col("item_id") + 1).cast("int").alias("popularity_rank"),
        (F.rand(1) * 100).alias("price_mean"), F.lit("kids.toys").alias("category_code"), *stamp)),
        ITEM_FEATURES, "overwrite", run_id="b")  # fmt: skip
    storage.write_table(fill(ITEM_NEIGHBORS, i.select("item_id",
        F.transform(F.sequence(F.lit(1), F.lit(50)), lambda x: (F.col("item_id") + x) % items).alias("neighbor_ids"),
        F.array_repeat(F.lit(0.5), 50).alias("neighbor_weights"), *stamp)), ITEM_NEIGHBORS, "overwrite", run_id="b")  # fmt: skip
    storage.write_table(fill(ITEM_EMBEDDINGS, i.filter("_day = 0").select("item_id", F.lit("all-MiniLM-L6-v2").alias("model"),
        F.lit(dim).alias("dim"), F.array_repeat(F.lit(0.05).cast("float"), dim).alias("embedding"),
        F.lit("h").alias("content_hash"), F.lit(AT).alias("embedded_at"))), ITEM_EMBEDDINGS, "overwrite", run_id="b")  # fmt: skip


USER_FEATURES_REFS = [
    "user_profile:segment",
    "user_profile:price_band",
    "user_history:item_ids",
    "user_history:item_scores",
    "user_history:bought_item_ids",
    "user_category_affinity:top_categories",
]
ITEM_FEATURES_REFS = [
    "item_stats:popularity_rank",
    "item_stats:price_mean",
    "item_stats:view_to_cart_rate",
    "item_embedding:embedding",
    "item_neighbors:neighbor_ids",
    "item_neighbors:neighbor_weights",
]


def latencies(call, calls: int) -> list[float]:
    for _ in range(20):
        call()
    out = []
    for _ in range(calls):
        began = time.perf_counter()
        call()
        out.append((time.perf_counter() - began) * 1000)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def run_environment(env: str, users: int, items: int, calls: int, rng: np.random.Generator) -> dict:
    from shoplake import feature_store
    from shoplake.settings import get_settings
    from shoplake.spark import get_spark

    get_settings.cache_clear()
    spark = get_spark("bench-feature-serving")
    write_gold(spark, users, items, 384)
    feature_store.apply(feature_store.get_store())  # Feast's import and the registry writes are not materialization
    began = time.perf_counter()
    done = feature_store.publish(spark)
    materialize_seconds = time.perf_counter() - began
    rows = 4 * users + 3 * items  # entity rows written: 4 user views, 3 item views
    store = feature_store.get_store()
    feast_seconds = feasts_materialization(env, store, done)

    def request_on(on, item_features=ITEM_FEATURES_REFS):
        """Two calls: the user's features once, the candidates' features for 100 items."""
        user = int(rng.integers(users))
        candidates = rng.integers(items, size=100).tolist()
        feature_store.online_features(on, USER_FEATURES_REFS, [{"user_id": user}])
        feature_store.online_features(on, item_features, [{"item_id": i} for i in candidates])

    def request():
        request_on(store)

    without_embeddings = [r for r in ITEM_FEATURES_REFS if "embedding" not in r]

    def request_without_embeddings():
        """The same without the 384-float embeddings (what a ranking model that does not read vectors asks)."""
        request_on(store, without_embeddings)

    result = {"env": env, "views": [m.view for m in done], "materialize_seconds": round(materialize_seconds, 2),
              "entity_rows": rows, "entity_rows_per_s": round(rows / materialize_seconds),
              "feast_materialize_seconds": round(feast_seconds, 2),
              "feast_entity_rows_per_s": round(rows / feast_seconds),
              "x_feast_materialize": round(feast_seconds / materialize_seconds, 2),
              "feast": summary(latencies(request, calls)),
              "feast_without_embeddings": summary(latencies(request_without_embeddings, calls))}  # fmt: skip
    stock = stock_store(env, store)
    result["feast_stock_store"] = summary(latencies(lambda: request_on(stock), calls))
    if env == "production":
        result["raw_redis"] = raw_redis(store, users, items, calls, rng)
    return result


def feasts_materialization(env: str, store, done) -> float:
    """The baseline for publishing: Feast's own materialize of the same windows, into the emptied online store
    (what shoplake's ``online_writer`` replaces; the two write the same bytes). Returns its seconds."""
    import sqlite3

    import redis

    if env == "local":
        with contextlib.closing(sqlite3.connect(store.config.online_store.path)) as db, db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                db.execute(f"DELETE FROM {table}")
    else:
        redis.Redis(host="127.0.0.1", port=6379, db=int(os.environ.get("BENCH_REDIS_DB", "11"))).flushdb()
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints progress bars
        for m in done:
            store.materialize(start_date=m.start, end_date=m.end, feature_views=[m.view])
    return time.perf_counter() - began


def stock_store(env: str, store):
    """The same registry and online store read through Feast's own ``SqliteOnlineStore`` or ``RedisOnlineStore``
    (shoplake's stores are subclasses of them with leaner reads; this is the comparison)."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    config = store.config
    if env == "local":
        online = {"type": "sqlite", "path": config.online_store.path}
    else:
        online = {"type": "redis", "connection_string": config.online_store.connection_string}
    return FeatureStore(config=RepoConfig(
        project=config.project, provider="local", registry=config.registry, repo_path=str(config.repo_path),
        entity_key_serialization_version=config.entity_key_serialization_version, offline_store={"type": "file"},
        online_store=online,
    ))  # fmt: skip


def raw_redis(store, users: int, items: int, calls: int, rng: np.random.Generator) -> dict:
    """The same keys straight from Redis: one pipeline of HGETALLs per request, and a pipelined write."""
    import redis
    from feast.infra.online_stores.redis import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    client = redis.Redis(host="127.0.0.1", port=6379, db=int(os.environ.get("BENCH_REDIS_DB", "11")))
    project = store.project

    def key(name: str, value: int) -> bytes:
        entity = EntityKey(join_keys=[name], entity_values=[Value(int64_val=value)])
        return _redis_key(project, entity, entity_key_serialization_version=3)

    def request():
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(key("user_id", int(rng.integers(users))))
        for i in rng.integers(items, size=100).tolist():
            pipe.hgetall(key("item_id", i))
        pipe.execute()

    read = summary(latencies(request, calls))
    payload = {b"f%d" % n: os.urandom(64) for n in range(8)}
    began = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for n in range(items):
        pipe.hset(b"bench:%d" % n, mapping=payload)
        if n % 1000 == 999:
            pipe.execute()
    pipe.execute()
    seconds = time.perf_counter() - began
    client.delete(*[b"bench:%d" % n for n in range(items)])
    return {**read, "pipelined_write_rows_per_s": round(items / seconds)}


@contextlib.contextmanager
def feast_environment(env: str) -> Iterator[None]:
    """A fresh SHOPLAKE_HOME for ``env``; for production, a fresh PostgreSQL registry database (dropped after) and
    Redis database 11 emptied."""
    home = Path(tempfile.mkdtemp(prefix=f"shoplake-bench-feast-{env}-"))
    os.environ["SHOPLAKE_HOME"] = str(home)
    os.environ["SHOPLAKE_FEAST_ENV"] = env
    database = None
    if env == "production":
        import psycopg
        import redis

        database = f"shoplake_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {database}")
        os.environ["SHOPLAKE_FEAST_REGISTRY_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        os.environ["SHOPLAKE_FEAST_REDIS"] = "127.0.0.1:6379,db=11"
        redis.Redis(db=11).flushdb()
    try:
        yield
    finally:
        if database:
            import psycopg

            with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--calls", type=int, default=1_000)
    args = parser.parse_args()
    os.environ.setdefault("SHOPLAKE_SPARK_UI", "false")
    rng = np.random.default_rng(7)
    results = []
    for env in ("local", "production"):
        with feast_environment(env):
            results.append(run_environment(env, args.users, args.items, args.calls, rng))
            print(json.dumps(results[-1], indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "feature_serving.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
