"""Gold: every feature table as of one date, from the non-bot silver events of the history window before it.

Each table's ``as_of_date`` partition is replaced, so rerunning a date gives the same tables. Late events merged
into an earlier silver date are picked up by the next gold run, whose history window covers that date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from shoplake import storage
from shoplake.catalog import (
    CATEGORY_POPULAR,
    CF_RECOMMENDATIONS,
    INTERACTIONS,
    ITEM_FEATURES,
    ITEM_NEIGHBORS,
    ITEM_SIMILARITY,
    ITEMS,
    SILVER_EVENTS,
    USER_FEATURES,
    USER_ITEMS,
    TableSpec,
)
from shoplake.errors import ShoplakeError
from shoplake.files import replace_folder, safe_name
from shoplake.run_metrics import record_metrics
from shoplake.settings import Settings, get_settings
from spark_jobs import items
from spark_jobs.interactions import AsOf, export_matrix, transform_interactions
from spark_jobs.item_features import transform_category_popular, transform_item_features
from spark_jobs.silver import check_history_window, event_dates
from spark_jobs.similarity import (
    transform_baskets,
    transform_cf_recommendations,
    transform_item_neighbors,
    transform_item_similarity,
    transform_user_items,
)
from spark_jobs.user_features import transform_user_features

log = logging.getLogger(__name__)
GOLD_TABLES = (
    INTERACTIONS, ITEM_SIMILARITY, ITEM_NEIGHBORS, USER_ITEMS, CF_RECOMMENDATIONS, USER_FEATURES, ITEM_FEATURES,
    CATEGORY_POPULAR,
)  # fmt: skip
BOUGHT_ITEMS_KEPT = 200  # per user, for excluding bought items online


@dataclass(frozen=True)
class GoldResult:
    as_of_date: dt.date
    rows: dict[str, int]  # per gold table, rows written
    versions: dict[str, int]  # per gold table, the Delta version written
    matrix: dict[str, int]  # users, items and nonzeros of the exported interaction matrix
    matrix_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)  # per table and the export: building and writing it


def read_history(spark: SparkSession, as_of: AsOf, history_days: int, sample_fraction: float = 1.0) -> DataFrame:
    """Non-bot silver events of the ``history_days`` days ending with the run date.

    ``sample_fraction`` < 1 keeps that share of users (chosen by a hash of the id, so the same users every run):
    a quick trial run from the Airflow UI, whose features describe the sampled users only."""
    first = as_of.date - dt.timedelta(days=history_days - 1)
    silver = storage.read_table(spark, SILVER_EVENTS)
    events = silver.filter(F.col("event_date").between(first, as_of.date) & ~F.col("is_bot"))
    if sample_fraction < 1:
        events = events.filter(F.abs(F.xxhash64("user_id")) % 10_000 < int(sample_fraction * 10_000))
    return events


def current_events(
    spark: SparkSession, as_of: AsOf, history: DataFrame, settings: Settings, sample_fraction: float
) -> DataFrame:
    """The events that describe items as they are now: every user's, in the window of the newest date in silver.
    ``items`` is one current table, so a run for an older date (a backfill) or a trial (sampled users) would set
    an item's category, brand or price back to what its own history last saw. A run for the newest date with
    every user reads nothing more: that is its own ``history``."""
    newest = max([*event_dates(), as_of.date])
    if newest == as_of.date and sample_fraction == 1:
        return history
    return read_history(spark, AsOf(newest, as_of.computed_at), settings.history_days)


def matrix_dir(settings: Settings, as_of_date: dt.date) -> Path:
    """Where the published interaction matrix of a date lies: that of gold's published interactions."""
    return settings.home / "exports" / "interaction_matrix" / f"as_of_date={as_of_date.isoformat()}"


def staged_matrix_dir(settings: Settings, as_of_date: dt.date, run_id: str) -> Path:
    """Where a gold run exports its matrix until gold's gate publishes it (``publish_matrix``) or drops it: a
    failed or trial (sampled) run must not replace the matrix of the published interactions."""
    run = safe_name(run_id)
    return settings.home / "exports" / "interaction_matrix" / ".staged" / run / f"as_of_date={as_of_date.isoformat()}"


def publish_matrix(settings: Settings, as_of_date: dt.date, run_id: str) -> Path | None:
    """Swap the run's staged matrix in whole for the date's; None when the run staged none (nothing changes)."""
    staged = staged_matrix_dir(settings, as_of_date, run_id)
    if not staged.exists():
        log.warning("gold run %s staged no interaction matrix for %s; the published one stays", run_id, as_of_date)
        return None
    replace_folder(staged, matrix_dir(settings, as_of_date))
    discard_matrix(settings, as_of_date, run_id)
    return matrix_dir(settings, as_of_date)


def discard_matrix(settings: Settings, as_of_date: dt.date, run_id: str) -> None:
    staged = staged_matrix_dir(settings, as_of_date, run_id)
    shutil.rmtree(staged, ignore_errors=True)
    with contextlib.suppress(OSError):  # the run's folder, once it holds no other date
        staged.parent.rmdir()


def run_gold(
    spark: SparkSession,
    as_of_date: dt.date,
    *,
    run_id: str,
    computed_at: dt.datetime,
    settings: Settings | None = None,
    sample_fraction: float = 1.0,
) -> GoldResult:
    settings = settings or get_settings()
    as_of = AsOf(as_of_date, computed_at)
    partition = [{"as_of_date": as_of_date}]
    rows: dict[str, int] = {}
    versions: dict[str, int] = {}
    seconds: dict[str, float] = {}

    def write(df: DataFrame, table: TableSpec) -> DataFrame:
        # one as_of_date per run: every task's rows share the partition value already, so nothing is rebalanced
        written = storage.write_table(
            df, table, "overwrite_partitions", partitions=partition, run_id=run_id, clustered=True
        )
        rows[table.name], versions[table.name] = written.rows, written.version
        return storage.read_table(spark, table).filter(F.col("as_of_date") == as_of_date)

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        """Wall time of building and writing one table: its eager parts (quantiles, shipped matrices) included."""
        began = time.perf_counter()
        yield
        seconds[name] = time.perf_counter() - began

    # Not cached: re-reading silver's Parquet is cheap, and cached blocks would hold back the memory that the
    # basket-pair aggregation needs to spill at ten million events.
    if not 0 < sample_fraction <= 1:
        raise ShoplakeError(f"sample fraction must be in (0, 1], got {sample_fraction}")
    check_history_window("gold", as_of_date, settings.history_days)
    events = read_history(spark, as_of, settings.history_days, sample_fraction)
    with timed(ITEMS.name):
        described = current_events(spark, as_of, events, settings, sample_fraction)
        items.refresh_items_from_events(spark, described, run_id=run_id, updated_at=computed_at)
    with timed(INTERACTIONS.name):
        interactions = write(
            transform_interactions(events, as_of, settings.event_weights, settings.half_life_days), INTERACTIONS
        )
    # Cached: the per-item basket counts and the pair counting both read baskets (a window over every event), and
    # Spark does not share the scans between two jobs.
    with timed(ITEM_SIMILARITY.name):
        baskets = baskets_of(events, settings).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            similarity = write(item_similarity_of(baskets, as_of, settings), ITEM_SIMILARITY)
        finally:
            baskets.unpersist()
    with timed(ITEM_NEIGHBORS.name):
        write(transform_item_neighbors(similarity, as_of), ITEM_NEIGHBORS)
    with timed(USER_ITEMS.name):
        user_items = write(
            transform_user_items(
                interactions, as_of, user_items=settings.cf_user_items, bought_items=BOUGHT_ITEMS_KEPT
            ),
            USER_ITEMS,
        )
    with timed(CF_RECOMMENDATIONS.name):
        write(cf_recommendations_of(user_items, interactions, similarity, as_of, settings), CF_RECOMMENDATIONS)
    with timed(USER_FEATURES.name):
        write(transform_user_features(events, as_of), USER_FEATURES)
    with timed(ITEM_FEATURES.name):
        item_features = write(
            transform_item_features(
                events, storage.read_table(spark, ITEMS), as_of, prior_strength=settings.rate_prior_strength
            ),
            ITEM_FEATURES,
        )
    with timed(CATEGORY_POPULAR.name):
        write(transform_category_popular(item_features, as_of, keep=settings.popular_items_kept), CATEGORY_POPULAR)
    out = staged_matrix_dir(settings, as_of_date, run_id)
    with timed("interaction_matrix"):
        matrix = export_matrix(interactions, out)
    record_metrics(spark, run_id, "gold", {f"{name}_rows": count for name, count in rows.items()},
                   recorded_at=computed_at, run_date=as_of_date)  # fmt: skip
    log.info("gold as of %s: %s in %s s", as_of_date, rows, {name: round(s, 1) for name, s in seconds.items()})
    return GoldResult(as_of_date, rows, versions, matrix, out, seconds)


def baskets_of(events: DataFrame, settings: Settings) -> DataFrame:
    return transform_baskets(events, settings.similarity_basket_items)


def item_similarity_of(baskets: DataFrame, as_of: AsOf, settings: Settings) -> DataFrame:
    """Item–item similarity of ``baskets`` with the settings' top-K, damping and support (the offline evaluation
    trains exactly what gold builds)."""
    return transform_item_similarity(
        baskets, as_of, top_k=settings.similarity_top_k, damping=settings.similarity_popularity_damping,
        min_support=settings.similarity_min_support,
    )  # fmt: skip


def cf_recommendations_of(
    ratings: DataFrame, interactions: DataFrame, similarity: DataFrame, as_of: AsOf, settings: Settings
) -> DataFrame:
    """Top-N item-based CF recommendations per user with the settings' N and contribution bounds."""
    return transform_cf_recommendations(
        ratings, interactions, similarity, as_of, top_n=settings.cf_top_n,
        max_contributions=settings.cf_max_contributions,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """spark-submit entry point: ``spark_jobs/gold.py --date D --run-id R``."""
    from shoplake.spark import get_spark

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--run-id", default="gold")
    args = parser.parse_args(argv)
    print(run_gold(get_spark("gold"), args.date, run_id=args.run_id, computed_at=dt.datetime.now(dt.UTC)))


if __name__ == "__main__":
    from shoplake.spark_submit import run_as_job

    run_as_job(main)
