"""``shoplake``: one command per stage, calling the same functions the Airflow DAGs call."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from shoplake.errors import ShoplakeError

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
F = TypeVar("F", bound=Callable[..., Any])
EVENT_SUFFIXES = (".csv", ".csv.gz", ".json", ".json.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")

EventsOption = Annotated[
    list[Path],
    typer.Option("--events", help="Events file (CSV or JSON lines, optionally .gz) or a folder of them; repeatable."),
]
ItemsOption = Annotated[Path | None, typer.Option("--items", help="Item catalogue (CSV or JSON lines).")]
RunIdOption = Annotated[str | None, typer.Option("--run-id", help="Run id to record; default: a new one.")]
DateOption = Annotated[
    dt.datetime | None, typer.Option("--date", formats=["%Y-%m-%d"], help="Run date (UTC); default: see the command.")
]
StartOption = Annotated[
    dt.datetime | None, typer.Option("--start", formats=["%Y-%m-%d"], help="First date of a range.")
]
EndOption = Annotated[dt.datetime | None, typer.Option("--end", formats=["%Y-%m-%d"], help="Last date of a range.")]


def _clear_errors(command: F) -> F:
    """Print shoplake's own errors as one line and exit 2; anything else keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it logs whole configs at INFO
        try:
            return command(*args, **kwargs)
        except ShoplakeError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def expand_event_paths(paths: list[Path]) -> list[str]:
    """Files as given; a folder stands for the events files directly inside it, in name order."""
    expanded: list[str] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(EVENT_SUFFIXES))
            if not found:
                raise ShoplakeError(f"{path}: folder holds no events files ({', '.join(EVENT_SUFFIXES)})")
            expanded.extend(str(p) for p in found)
        elif not path.is_file():
            raise ShoplakeError(f"{path}: no such file")
        else:
            expanded.append(str(path))
    return expanded


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@app.command()
@_clear_errors
def generate(
    events: Annotated[int, typer.Option(help="Number of behaviour events.")] = 1_000_000,
    days: Annotated[int, typer.Option(help="Days the events span.")] = 30,
    items: Annotated[int, typer.Option(help="Number of catalogue items.")] = 50_000,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("generated"),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 46,
) -> None:
    """Write a synthetic shop in the REES46 schema (one CSV per day) and its item catalogue."""
    from shoplake.generate import generate_shop

    shop = generate_shop(out, events=events, days=days, items=items, seed=seed)
    typer.echo(
        f"{shop.events:,} events ({shop.sessions:,} sessions, {shop.users:,} users) in {len(shop.event_files)} files under {out / 'events'}/"
    )
    typer.echo(f"{shop.items:,} items in {shop.catalog_file}")


def _ingest(events: list[Path], items_path: Path | None, run_id: str) -> tuple[str, ...]:
    """Land the files; return the checksums of all of them (landed now or before)."""
    from shoplake.spark import get_spark
    from spark_jobs import bronze, items

    paths = expand_event_paths(events)
    for path in paths:
        bronze.file_format(path)  # an unsupported format fails before Spark starts
    if items_path is not None and not items_path.is_file():
        raise ShoplakeError(f"{items_path}: no such file")
    spark = get_spark("shoplake")
    landed = bronze.land_event_files(spark, paths, run_id=run_id, ingested_at=_now())
    typer.echo(f"bronze_events: {landed.rows_landed:,} rows from {len(landed.files_landed)} new files "
               f"({len(landed.files_already_landed)} already landed), version {landed.version}")  # fmt: skip
    if landed.version is not None and landed.rows_landed:
        from expectations.stages import validate_bronze

        _print_quality(validate_bronze(spark, landed.version, ingest_run_id=landed.run_id, run_id=run_id, at=_now()))
    if items_path is not None:
        result = items.land_catalog(spark, str(items_path), run_id=run_id, updated_at=_now())
        typer.echo(f"items: {result.rows:,} catalogue rows merged, version {result.version}")
    return landed.checksums


def _date_range(date: dt.datetime | None, start: dt.datetime | None, end: dt.datetime | None) -> list[dt.date] | None:
    """--date D, or --start S [--end E] (E defaults to S); None when no date was given."""
    from spark_jobs.silver import dates_between

    if date is not None and (start is not None or end is not None):
        raise ShoplakeError("give either --date or --start/--end, not both")
    if date is not None:
        return [date.date()]
    if start is None:
        if end is not None:
            raise ShoplakeError("--end needs --start")
        return None
    return dates_between(start.date(), (end or start).date())


def _silver(dates: list[dt.date], run_id: str) -> None:
    from expectations.stages import validate_silver
    from shoplake.spark import get_spark
    from spark_jobs.silver import run_silver

    spark = get_spark("shoplake")
    result = run_silver(spark, dates, run_id=run_id, processed_at=_now())
    c = result.counts
    typer.echo(f"silver_events {dates[0]}..{dates[-1]}: {c['kept']:,} kept of {result.bronze_rows:,} bronze rows "
               f"({c['exact_duplicate']:,} exact duplicates, {c['collapsed']:,} repeats collapsed, "
               f"{c['quarantined']:,} quarantined)")  # fmt: skip
    share = c["quarantined"] / result.bronze_rows if result.bronze_rows else 0.0
    _print_quality(
        validate_silver(spark, result.silver_version, dates, quarantine_share=share, run_id=run_id, at=_now())
    )


def _latest_silver_date() -> dt.date:
    from shoplake import storage
    from shoplake.catalog import SILVER_EVENTS

    dates = [p["event_date"] for p in storage.partition_values(SILVER_EVENTS) if p["event_date"]]
    if not dates:
        raise ShoplakeError("silver_events is empty: run `shoplake silver` (or `shoplake pipeline`) first")
    return max(dt.date.fromisoformat(d) for d in dates)


def _gold(as_of: dt.date, run_id: str) -> None:
    from expectations.stages import validate_gold
    from shoplake.settings import get_settings
    from shoplake.spark import get_spark
    from spark_jobs.gold import read_history, run_gold
    from spark_jobs.interactions import AsOf

    spark = get_spark("shoplake")
    now = _now()
    result = run_gold(spark, as_of, run_id=run_id, computed_at=now)
    typer.echo(f"gold as of {as_of}: " + ", ".join(f"{name} {rows:,}" for name, rows in result.rows.items()))
    typer.echo(f"interaction matrix (COO + id maps): {result.matrix_dir}")
    history = read_history(spark, AsOf(as_of, now), get_settings().history_days)
    _print_quality(validate_gold(spark, result.versions, as_of, history=history, run_id=run_id, at=_now()))


def _embed(run_id: str) -> None:
    from shoplake.spark import get_spark
    from spark_jobs.embed_items import run_embed

    result = run_embed(get_spark("shoplake"), run_id=run_id, embedded_at=_now())
    rate = f" at {result.items_per_second:,.0f} items/s" if result.embedded else ""
    typer.echo(f"item_embeddings ({result.model}, dim {result.dim}): {result.embedded:,} items embedded{rate}, "
               f"{result.unchanged:,} unchanged, {result.without_text:,} without any text (not embedded)")  # fmt: skip


def _kg(as_of: dt.date, run_id: str) -> None:
    from expectations.stages import validate_embeddings_and_graph
    from shoplake.encoder import ModelSpec
    from shoplake.settings import get_settings
    from shoplake.spark import get_spark
    from spark_jobs.knowledge_graph import run_knowledge_graph

    spark = get_spark("shoplake")
    result = run_knowledge_graph(spark, as_of, run_id=run_id, created_at=_now())
    typer.echo("kg_nodes: " + ", ".join(f"{kind} {n:,}" for kind, n in result.nodes.items()))
    typer.echo("kg_edges: " + ", ".join(f"{relation} {n:,}" for relation, n in result.edges.items()))
    if result.similar_same_category_share is not None:
        typer.echo(f"SIMILAR_TO pairs sharing a leaf category: {result.similar_same_category_share:.1%}")
    spec = ModelSpec.from_path(get_settings().model_path)
    _print_quality(validate_embeddings_and_graph(spark, model=spec.name, dim=spec.dim, run_id=run_id, at=_now(),
                                                 run_date=as_of))  # fmt: skip


def _print_quality(results: list[Any]) -> None:
    """One line per validated table: passed (with warnings) and the version now published."""
    for result in results:
        warnings = result.outcome.failures("warning")
        note = f", {len(warnings)} warnings" if warnings else ""
        typer.echo(f"  quality: {result.table} v{result.version} passed {len(result.outcome.outcomes)} "
                   f"expectations{note}; published")  # fmt: skip


@app.command()
@_clear_errors
def ingest(events: EventsOption, items: ItemsOption = None, run_id: RunIdOption = None) -> None:
    """Land events files into bronze (a file already landed is skipped) and, optionally, an item catalogue."""
    from spark_jobs.bronze import new_run_id

    _ingest(events, items, run_id or new_run_id("ingest"))


@app.command()
@_clear_errors
def silver(
    date: DateOption = None, start: StartOption = None, end: EndOption = None, run_id: RunIdOption = None
) -> None:
    """Rebuild silver for a date or a range from bronze: types, quarantine, dedup, sessions, reconciliation."""
    from spark_jobs.bronze import new_run_id

    dates = _date_range(date, start, end)
    if dates is None:
        raise ShoplakeError("give --date or --start [--end]")
    _silver(dates, run_id or new_run_id("silver"))


@app.command()
@_clear_errors
def gold(date: DateOption = None, run_id: RunIdOption = None) -> None:
    """Compute every gold table as of a date (default: the latest date in silver)."""
    from spark_jobs.bronze import new_run_id

    as_of = date.date() if date else _latest_silver_date()
    _gold(as_of, run_id or new_run_id("gold"))


@app.command()
@_clear_errors
def embed(run_id: RunIdOption = None) -> None:
    """Embed the items whose text or model changed since their last embedding (GPU when present, else CPU)."""
    from spark_jobs.bronze import new_run_id

    _embed(run_id or new_run_id("embed"))


@app.command()
@_clear_errors
def kg(date: DateOption = None, run_id: RunIdOption = None) -> None:
    """Rebuild the product knowledge graph; behaviour edges use silver up to --date (default: latest in silver)."""
    from spark_jobs.bronze import new_run_id

    as_of = date.date() if date else _latest_silver_date()
    _kg(as_of, run_id or new_run_id("kg"))


@app.command()
@_clear_errors
def quality(runs: Annotated[int, typer.Option(help="How many recent runs to show.")] = 5) -> None:
    """Quality verdicts of recent runs per table, and where the Data Docs are."""
    import json

    from pyspark.sql import functions as F

    from expectations.gate import data_docs_dir, write_run_history
    from shoplake import storage
    from shoplake.catalog import RUN_METRICS
    from shoplake.spark import get_spark

    if storage.table_version(RUN_METRICS) is None:
        raise ShoplakeError("no run has been validated yet: run `shoplake pipeline` first")
    spark = get_spark("shoplake")
    rows = (storage.read_table(spark, RUN_METRICS).filter(F.col("stage") == "quality")
            .orderBy(F.desc("recorded_at")).collect())  # fmt: skip
    recent = list(dict.fromkeys(r.run_id for r in rows))[:runs]
    for run_id in recent:
        typer.echo(f"run {run_id}")
        for r in (r for r in rows if r.run_id == run_id):
            detail = json.loads(r.details or "{}")
            verdict = "passed" if r.value >= 1 else "FAILED"
            typer.echo(f"  {r.metric:<18} v{detail.get('version', '?'):<5} {verdict}")
            for line in detail.get("critical_failures", []) + detail.get("warnings", []):
                typer.echo(f"      {line}")
    history = write_run_history(spark)
    typer.echo(f"Data Docs:   {data_docs_dir() / 'index.html'}")
    typer.echo(f"run history: {history}")


@app.command()
@_clear_errors
def tables() -> None:
    """Each table's Delta version, rows, files and size."""
    from shoplake import storage
    from shoplake.catalog import TABLES
    from shoplake.settings import get_settings

    typer.echo(f"lake: {get_settings().lake_root}")
    typer.echo(f"{'table':<20} {'version':>7} {'rows':>12} {'files':>6} {'size':>10}")
    for name in TABLES:
        info = storage.table_info(name)
        if info is None:
            typer.echo(f"{name:<20} {'-':>7} {'-':>12} {'-':>6} {'-':>10}  (not written yet)")
        else:
            typer.echo(f"{name:<20} {info.version:>7} {info.rows:>12,} {info.files:>6} {_size(info.size_bytes):>10}")


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


@app.command()
@_clear_errors
def pipeline(
    events: EventsOption, items: ItemsOption = None, date: DateOption = None, run_id: RunIdOption = None
) -> None:
    """The whole pipeline without Airflow: every stage in order, then where each output is.

    Silver is rebuilt for the dates the given files hold (late files included); gold is computed as of --date,
    or else the latest date in silver."""
    from shoplake.settings import get_settings
    from shoplake.spark import get_spark
    from spark_jobs.bronze import event_dates, new_run_id

    run_id = run_id or new_run_id("pipeline")
    checksums = _ingest(events, items, run_id)
    dates = event_dates(get_spark("shoplake"), checksums)
    if not dates:
        raise ShoplakeError("the given files hold no event with a readable time; see quarantine_events")
    _silver(dates, run_id)
    as_of = date.date() if date else _latest_silver_date()
    _gold(as_of, run_id)
    _embed(run_id)
    _kg(as_of, run_id)
    settings = get_settings()
    typer.echo(f"\nrun {run_id} done. Outputs:")
    typer.echo(f"  lake (Delta tables): {settings.lake_root}")
    typer.echo(f"  reports:             {settings.reports_dir}")
    typer.echo(
        f"  Data Docs:           {settings.reports_dir / 'data_docs' / 'index.html'} "
        f"(run history: {settings.reports_dir / 'data_docs' / 'runs.html'})"
    )
    tables()


@app.command()
@_clear_errors
def vacuum(
    table: Annotated[list[str] | None, typer.Argument(help="Tables; default: all written tables.")] = None,
    retention_hours: Annotated[int, typer.Option(help="Keep files any version this recent needs.")] = 168,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
) -> None:
    """Delete data files that no version within the retention needs."""
    from shoplake import storage

    for name in table or _written_tables():
        removed = storage.vacuum_table(name, retention_hours=retention_hours, dry_run=dry_run)
        typer.echo(f"{name}: {len(removed)} files {'would be ' if dry_run else ''}removed")


@app.command()
@_clear_errors
def optimize(
    table: Annotated[list[str] | None, typer.Argument(help="Tables; default: all written tables.")] = None,
) -> None:
    """Compact small files and checkpoint the log."""
    from shoplake import storage

    for name in table or _written_tables():
        metrics = storage.optimize_table(name)
        typer.echo(f"{name}: {metrics['numFilesRemoved']} files compacted into {metrics['numFilesAdded']}")


def _written_tables() -> list[str]:
    from shoplake import storage
    from shoplake.catalog import TABLES

    return [name for name in TABLES if storage.table_version(name) is not None]


def main() -> None:
    app(sys.argv[1:])


if __name__ == "__main__":
    main()
