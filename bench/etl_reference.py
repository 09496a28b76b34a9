"""The ETL benchmark's baseline: every gold table of ``spark_jobs/gold.py``, computed by one DuckDB process.

The SQL is ``etl_reference.sql`` beside this file; this module fills in the settings and runs it step by step.

From the same CSV files it applies silver's rules (typing, validity, exact duplicates and repeats within a day,
sessions with the inactivity fallback, bot days left out) and builds each gold table as of the run date —
``items``, ``interactions`` and the COO matrix export, ``item_similarity``, ``item_neighbors``, ``user_items``,
``cf_recommendations``, ``user_features``, ``item_features``, ``category_popular`` — with the same settings, then
writes each to Parquet. It keeps no bronze or silver table, no provenance, quarantine or reconciliation, and
writes no Delta log: a floor under the pipeline's work, in plain SQL as DuckDB would be used for it.
Event times are read in REES46's format only (the generated shops and the sample use it; the pipeline also
reads ISO-8601).

Each step is timed on its own, so a reader sees where DuckDB's time goes; ``CHECKED_SUMS`` are what the benchmark
compares with the pipeline's tables before it reports any time.
"""

from __future__ import annotations

import datetime as dt
import os
import string
import time
from dataclasses import dataclass
from pathlib import Path

from shoplake.settings import Settings
from spark_jobs.columns import EVENT_TYPE_SYNONYMS
from spark_jobs.gold import BOUGHT_ITEMS_KEPT
from spark_jobs.item_features import ALL_CATEGORIES, COUNTED_TYPES, UNKNOWN_CATEGORY
from spark_jobs.user_features import NO_PURCHASE_SEGMENT, PRICE_BANDS, QUINTILES, SEGMENT_GRID, TOP_CATEGORIES

SQL = Path(__file__).with_suffix(".sql")  # its steps: "-- step: <name>" lines, each followed by its statements

# What the benchmark compares with the pipeline: each table's rows, and a sum of its values that only the same values
# give (None: rows alone). The sums are SQL that DuckDB and Spark both read.
CHECKED_SUMS = {
    "silver_events": None, "items": None, "interactions": "score", "item_similarity": "weight",
    "item_neighbors": None, "user_items": "cardinality(item_ids)", "cf_recommendations": "score",
    "user_features": "monetary", "item_features": "views_30d + carts_30d + purchases_30d",
    "category_popular": "cardinality(item_ids)", "matrix_nonzeros": "score",
}  # fmt: skip
CHECKED_SOURCES = {"silver_events": "silver", "matrix_nonzeros": "read_parquet('${out}/matrix_coo.parquet')"}


@dataclass(frozen=True)
class ReferenceRun:
    seconds: dict[str, float]  # per step, in order
    checks: dict[str, tuple[int, float]]  # per table: rows and the check sum


def _above(column: str, thresholds: str) -> str:
    """How many of the quintile thresholds ``column`` exceeds (what ``quintile_score`` counts)."""
    return " + ".join(f"CAST({column} > {thresholds}[{n}] AS INTEGER)" for n in range(1, len(QUINTILES) + 1))


def _segment() -> str:
    whens = " ".join(
        f"WHEN r_score IN ({', '.join(map(str, rs))}) AND f_score IN ({', '.join(map(str, fs))}) THEN '{name}'"
        for name, rs, fs in SEGMENT_GRID
    )
    return f"CASE WHEN r_score IS NULL OR f_score IS NULL THEN '{NO_PURCHASE_SEGMENT}' {whens} ELSE '{NO_PURCHASE_SEGMENT}' END"


def _parameters(files: list[str], as_of: dt.date, ingested_at: dt.datetime, settings: Settings, out: Path) -> dict:
    from shoplake.catalog import COUNT_COLUMN, EVENT_TYPES, WINDOWS_DAYS

    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    synonyms = " ".join(f"WHEN '{raw}' THEN '{canonical}'" for raw, canonical in EVENT_TYPE_SYNONYMS.items())
    weights = " ".join(f"WHEN '{t}' THEN {w}" for t, w in settings.event_weights.items())
    windows = {w: f"event_time >= TIMESTAMP '{end - dt.timedelta(days=w)}'" for w in WINDOWS_DAYS}

    def windowed(types: tuple[str, ...]) -> list[tuple[str, str]]:
        """(column, condition) of each event type's count over each window, as the feature tables name them."""
        return [
            (f"{COUNT_COLUMN[t]}_{w}d", f"event_type = '{t}' AND {windows[w]}") for t in types for w in WINDOWS_DAYS
        ]

    activity, item_counts = windowed(EVENT_TYPES), windowed(COUNTED_TYPES)
    return {
        "files": [str(f) for f in files], "event_type": f"CASE lower(trim(event_type)) {synonyms} END",
        "earliest": dt.datetime.combine(settings.earliest_event_date, dt.time()).isoformat(sep=" "),
        "latest": (ingested_at.replace(tzinfo=None) + dt.timedelta(hours=settings.future_tolerance_hours)).isoformat(sep=" "),
        "repeat_seconds": settings.repeat_window_seconds, "gap_minutes": settings.session_gap_minutes,
        "bot_window": settings.bot_window_seconds, "bot_max": settings.bot_max_events_per_window,
        "first_date": as_of - dt.timedelta(days=settings.history_days - 1), "as_of_date": as_of,
        "end": end.isoformat(sep=" "), "start_30d": (end - dt.timedelta(days=30)).isoformat(sep=" "),
        "weight": f"CASE event_type {weights} ELSE 0 END", "half_life": settings.half_life_days,
        "basket_items": settings.similarity_basket_items, "min_support": settings.similarity_min_support,
        "damping": settings.similarity_popularity_damping, "top_k": settings.similarity_top_k,
        "user_items": settings.cf_user_items, "bought_kept": BOUGHT_ITEMS_KEPT,
        "max_contributions": settings.cf_max_contributions, "top_n": settings.cf_top_n,
        "activity_counts": ", ".join(f"count(*) FILTER (WHERE {cond}) AS {name}" for name, cond in activity),
        "activity_columns": ", ".join(name for name, _ in activity),
        "item_counts": ", ".join(f"count(*) FILTER (WHERE {cond}) AS {name}" for name, cond in item_counts),
        "quintiles": str(QUINTILES), "r_above": _above("recency_days", "r"), "f_above": _above("frequency", "f"),
        "m_above": _above("monetary", "m"), "segment": _segment(), "top_categories": TOP_CATEGORIES,
        **{f"band{n}": band for n, band in enumerate(PRICE_BANDS, 1)},
        "strength": settings.rate_prior_strength, "unknown_category": UNKNOWN_CATEGORY,
        "all_categories": ALL_CATEGORIES, "popular_kept": settings.popular_items_kept, "out": str(out),
    }  # fmt: skip


def run_reference(
    files: list[str], as_of: dt.date, ingested_at: dt.datetime, settings: Settings, out: Path
) -> ReferenceRun:
    """Run every step in one DuckDB process on all cores; Parquet outputs under ``out``."""
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    parameters = _parameters(files, as_of, ingested_at, settings, out)
    steps = [part.split("\n", 1) for part in SQL.read_text().split("-- step: ")[1:]]
    connection = duckdb.connect()
    connection.execute(f"SET threads = {os.cpu_count()}")
    connection.execute("SET preserve_insertion_order = false")  # no output depends on row order
    seconds: dict[str, float] = {}
    for step, sql in steps:
        began = time.perf_counter()
        connection.execute(string.Template(sql).substitute(parameters))
        seconds[step] = time.perf_counter() - began
    checks = {}
    for table, total in CHECKED_SUMS.items():
        source = string.Template(CHECKED_SOURCES.get(table, table)).substitute(parameters)
        rows, value = connection.execute(f"SELECT count(*), {f'sum({total})' if total else 0} FROM {source}").fetchone()  # type: ignore[misc]
        checks[table] = (int(rows), float(value or 0))
    connection.close()
    return ReferenceRun(seconds, checks)
