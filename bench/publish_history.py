"""Publishing on a lake with a long history: the daily publish (the newest gold date, materialized again) when gold
holds many feature dates, reading only the window against reading every date and then keeping the window.

The baseline is the read shoplake had until 2026-12-07 and Feast's file store has: the whole snapshot of each
source, then filtered (``online_writer``'s read, and ``delta_offline_store`` for any view Feast materializes,
without their windows). It is the same code with the window turned off, in the same run, so only the read
differs. The daily publish then grew with the shop's history: each view read every row of every date.

Run: ``python -m bench.publish_history --users 5000 --items 5000 --days 30`` (a few minutes; needs Redis and
PostgreSQL on 127.0.0.1 for the production rows).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

from bench.common import Measurement, measure, report
from bench.feature_serving import feast_environment, write_gold


@contextlib.contextmanager
def whole_reads() -> Iterator[None]:
    """The baseline: every source read whole, its window kept afterwards."""
    from shoplake import delta_offline_store, storage

    read_arrow = storage.read_arrow

    def read_all_then_keep(table: Any, columns: Any, version: int | None = None, where: Any = None) -> Any:
        rows = read_arrow(table, columns, version)
        return rows if where is None else rows.filter(where)

    with (
        mock.patch.object(delta_offline_store, "_reading", lambda job, reads: job),
        mock.patch.object(storage, "read_arrow", read_all_then_keep),
    ):
        yield


def run_environment(env: str, users: int, items: int, days: int) -> list[Measurement]:
    from shoplake import feature_store
    from shoplake.settings import get_settings
    from shoplake.spark import get_spark

    get_settings.cache_clear()
    spark = get_spark("bench-publish-history")
    write_gold(spark, users, items, 384, days)
    feature_store.publish(spark)  # the history's first publish (every date), not timed
    daily = feature_store.publish(spark)  # what each daily run publishes: the newest date's views again
    rows = sum(users if view.view.startswith("user") else items for view in daily)

    def publish() -> None:
        feature_store.publish(spark)

    def publish_reading_whole() -> None:
        with whole_reads():
            feature_store.publish(spark)

    whole = measure(f"{env}, every date read (baseline)", "baseline", rows, publish_reading_whole)
    window = measure(f"{env}, the window read", "shoplake", rows, publish)
    return [whole, window]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("SHOPLAKE_SPARK_UI", "false")
    for env in ("local", "production"):
        with feast_environment(env):
            measurements = run_environment(env, args.users, args.items, args.days)
        report(f"publish_history_{env}", measurements, measurements[0].case, vars(args))


if __name__ == "__main__":
    main()
