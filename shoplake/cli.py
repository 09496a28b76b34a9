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

from shoplake.errors import DataError, ShoplakeError

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
F = TypeVar("F", bound=Callable[..., Any])

EVENTS_HELP = "Events file (CSV or JSON lines, optionally .gz) or a folder of them; repeatable."
EventsOption = Annotated[list[Path], typer.Option("--events", help=EVENTS_HELP)]
OptionalEventsOption = Annotated[list[Path] | None, typer.Option("--events", help=EVENTS_HELP)]
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


def _say(step: Any) -> dict[str, Any]:
    """Print a step's lines for people; hand its outputs to the next step."""
    for line in step.lines:
        typer.echo(line)
    return step.outputs  # type: ignore[no-any-return]


def _ingest(events: list[Path], items_path: Path | None, run_id: str) -> list[dt.date]:
    """Land and validate the files; return the event dates they hold (landed now or before)."""
    from shoplake import orchestration

    paths = orchestration.event_files(events)
    landed = _say(orchestration.ingest(paths, str(items_path) if items_path else None, run_id))
    _say(orchestration.validate_raw(landed["version"], landed["ingest_run_id"], run_id))
    return [dt.date.fromisoformat(d) for d in landed["dates"]]


def _date_range(date: dt.datetime | None, start: dt.datetime | None, end: dt.datetime | None) -> list[dt.date] | None:
    from shoplake.orchestration import dates_from

    return dates_from(date.date() if date else None, start.date() if start else None, end.date() if end else None)


def _silver(dates: list[dt.date], run_id: str) -> None:
    from shoplake import orchestration

    built = _say(orchestration.build_silver(dates, run_id))
    _say(orchestration.validate_silver(built["version"], dates, built["quarantine_share"], run_id))


def _latest_silver_date() -> dt.date:
    from shoplake.orchestration import latest_silver_date

    return latest_silver_date()


def _gold(as_of: dt.date, run_id: str) -> None:
    from shoplake import orchestration

    built = _say(orchestration.build_gold(as_of, run_id))
    _say(orchestration.validate_gold(built["versions"], as_of, run_id))


def _embed(run_id: str, full_refresh: bool = False) -> None:
    from shoplake import orchestration

    _say(orchestration.embed(run_id, full_refresh))


def _publish(full_refresh: bool = False, since: dt.date | None = None) -> None:
    from shoplake import orchestration

    _say(orchestration.publish_features(full_refresh, since))
    _say(orchestration.check_features())


def _kg(as_of: dt.date, run_id: str) -> None:
    from shoplake import orchestration

    _say(orchestration.knowledge_graph(as_of, run_id))
    _say(orchestration.validate_graph(as_of, run_id))


@app.command()
@_clear_errors
def ingest(
    events: OptionalEventsOption = None,
    items: ItemsOption = None,
    run_id: RunIdOption = None,
) -> None:
    """Land events files into bronze (a file already landed is skipped), an item catalogue, or both."""
    from spark_jobs.bronze import new_run_id

    if not events and items is None:
        raise ShoplakeError("give --events, --items or both")
    _ingest(events or [], items, run_id or new_run_id("ingest"))


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
def gold(date: DateOption = None, start: StartOption = None, end: EndOption = None, run_id: RunIdOption = None) -> None:
    """Compute every gold table as of a date (default: the latest date in silver), or as of each date of a range.

    A range gives the daily feature history that point-in-time training sets read: each date is computed from the
    silver history up to that date alone, then gated and published, in date order."""
    from spark_jobs.bronze import new_run_id

    dates = _date_range(date, start, end) or [_latest_silver_date()]
    run_id = run_id or new_run_id("gold")
    for as_of in dates:
        # a run's metrics are keyed by (run, stage, metric): each date of a range records under its own run id
        _gold(as_of, run_id if len(dates) == 1 else f"{run_id}-{as_of:%Y%m%d}")


@app.command()
@_clear_errors
def embed(
    run_id: RunIdOption = None,
    full_refresh: Annotated[bool, typer.Option(help="Embed every item, changed or not.")] = False,
) -> None:
    """Embed the items whose text or model changed since their last embedding (GPU when present, else CPU)."""
    from spark_jobs.bronze import new_run_id

    _embed(run_id or new_run_id("embed"), full_refresh)


@app.command()
@_clear_errors
def kg(date: DateOption = None, run_id: RunIdOption = None) -> None:
    """Rebuild the product knowledge graph; behaviour edges use silver up to --date (default: latest in silver)."""
    from spark_jobs.bronze import new_run_id

    as_of = date.date() if date else _latest_silver_date()
    _kg(as_of, run_id or new_run_id("kg"))


@app.command()
@_clear_errors
def publish(
    full_refresh: Annotated[bool, typer.Option(help="Materialize every view from its earliest feature time.")] = False,
    since: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Materialize gold again from this date on (after rerunning it)."),
    ] = None,
) -> None:
    """Publish the gold features to Feast (apply + incremental materialization), then check online = offline.

    The newest gold date is always materialized again; after `shoplake gold` reran an older date, pass it as
    --since."""
    _publish(full_refresh, since.date() if since else None)


@app.command()
@_clear_errors
def recommend(
    user: Annotated[int, typer.Option("--user", help="The user's id.")],
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
) -> None:
    """Top-k items for a user as JSON, from online features only (Feast SDK)."""
    import json

    from shoplake.feature_store import get_store
    from shoplake.recommender import recommend as recommend_items

    typer.echo(json.dumps(recommend_items(get_store(), user, k).to_dict(), indent=2))


@app.command()
@_clear_errors
def evaluate(date: DateOption = None, run_id: RunIdOption = None) -> None:
    """Recall/NDCG/HitRate@K of the recommender against popularity on a time split of the history."""
    from shoplake import orchestration
    from spark_jobs.bronze import new_run_id

    as_of = date.date() if date else _latest_silver_date()
    _say(orchestration.evaluate_recommender(as_of, run_id or new_run_id("evaluate")))


report_app = typer.Typer(help="Reports built from the feature store.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("marketing")
@_clear_errors
def report_marketing() -> None:
    """Segment sizes, RFM, category affinity and revenue share as HTML, plus audience exports."""
    from shoplake import orchestration

    _say(orchestration.marketing_report())


@app.command("training-set")
@_clear_errors
def training_set(
    start: StartOption = None,
    end: EndOption = None,
    name: Annotated[str, typer.Option(help="File name under $SHOPLAKE_HOME/exports/training_sets/.")] = "purchase",
) -> None:
    """Labelled views (bought within the label window?) with point-in-time features from Feast."""
    from shoplake.spark import get_spark
    from spark_jobs.training_set import build_training_set

    given = end or start
    last = given.date() if given else _latest_silver_date()
    first = start.date() if start else last
    result = build_training_set(get_spark("shoplake"), first, last, name=name)
    typer.echo(f"training set: {result.rows:,} rows, {result.positives:,} positives → {result.path}")
    worst = sorted(result.null_rates.items(), key=lambda kv: -kv[1])[:5]
    typer.echo("highest null rates: " + ", ".join(f"{c} {r:.1%}" for c, r in worst))


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
def outputs() -> None:
    """Where everything is: the lake, exports, reports, Data Docs, and each table's state."""
    from shoplake.settings import get_settings

    settings = get_settings()
    docs = settings.reports_dir / "data_docs"
    typer.echo("Outputs:")
    typer.echo(f"  lake (Delta tables): {settings.lake_root}")
    typer.echo(f"  interaction matrix:  {settings.home / 'exports' / 'interaction_matrix'}")
    typer.echo(f"  reports:             {settings.reports_dir}")
    typer.echo(f"  Data Docs:           {docs / 'index.html'} (run history: {docs / 'runs.html'})")
    tables()


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
    from shoplake import orchestration
    from spark_jobs.bronze import new_run_id

    run_id = run_id or new_run_id("pipeline")
    dates = _ingest(events, items, run_id)
    if not dates:
        raise DataError(
            "the given files hold no event with a readable time (a changed time format?); nothing was built — "
            "the next silver run quarantines their rows (quarantine_events says why)"
        )
    _silver(dates, run_id)
    as_of = date.date() if date else _latest_silver_date()
    _gold(as_of, run_id)
    _embed(run_id)
    _kg(orchestration.graph_date(as_of), run_id)
    _publish(since=as_of)
    _say(orchestration.evaluate_recommender(as_of, run_id))
    _say(orchestration.marketing_report())
    typer.echo(f"\nrun {run_id} done.")
    outputs()


@app.command()
@_clear_errors
def vacuum(
    table: Annotated[list[str] | None, typer.Argument(help="Tables; default: all written tables.")] = None,
    retention_hours: Annotated[int, typer.Option(help="Keep files any version this recent needs.")] = 168,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
) -> None:
    """Delete data files that no version within the retention needs, nor the published version (a failed gate
    restores it)."""
    from expectations.gate import vacuum_keeping_published
    from shoplake.spark import get_spark

    spark = get_spark("shoplake")
    for name in table or _written_tables():
        removed, kept_hours = vacuum_keeping_published(spark, name, retention_hours, dry_run=dry_run)
        kept = f" (retention {kept_hours} h, to keep the published version)" if kept_hours > retention_hours else ""
        typer.echo(f"{name}: {len(removed)} files {'would be ' if dry_run else ''}removed{kept}")


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
    from shoplake.settings import get_settings

    written = [name for name in TABLES if storage.table_version(name) is not None]
    if not written:  # said, rather than printing nothing and exiting 0
        raise ShoplakeError(f"no table has been written yet in {get_settings().lake_root}")
    return written


def main() -> None:
    app(sys.argv[1:])


if __name__ == "__main__":
    main()
