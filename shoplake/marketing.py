"""The marketing report and audience exports, read from the ``marketing_analytics_v1`` feature service.

Every user of the latest feature date is read through Feast (offline, point-in-time at that date's feature time),
so the report shows exactly what the feature store serves. Out: a static HTML page with charts (inline SVG, no
scripts or downloads) at ``$SHOPLAKE_HOME/reports/marketing/index.html`` — segment sizes, revenue share, the RFM
grid, category affinity by segment — and audiences as Parquet and CSV: the at-risk users (segments at_risk,
cant_lose, about_to_sleep) with an affinity for each top-level category, ready for a win-back campaign.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shoplake.errors import DataError
from shoplake.files import replace_folder
from shoplake.settings import Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

WIN_BACK_SEGMENTS = ("at_risk", "cant_lose", "about_to_sleep")
SERVICE = "marketing_analytics_v1"


@dataclass(frozen=True)
class MarketingReport:
    page: Path
    users: int
    segments: dict[str, int]
    audiences: dict[str, int]  # file stem → users


def read_service(spark: SparkSession, settings: Settings) -> tuple[pd.DataFrame, dt.datetime]:
    """Every user of the latest gold date with the service's features, as Feast serves them offline."""
    import pandas as pd
    from pyspark.sql import functions as F

    from shoplake import storage
    from shoplake.catalog import USER_FEATURES
    from shoplake.feature_store import get_store, historical_features

    empty = DataError("user_features is empty: run the pipeline before the marketing report")
    if storage.table_version(USER_FEATURES) is None:
        raise empty
    users = storage.read_table(spark, USER_FEATURES)
    latest = users.agg(F.max("event_timestamp")).collect()[0][0]
    if latest is None:
        raise empty
    ids = [r.user_id for r in users.filter(F.col("event_timestamp") == latest).select("user_id").collect()]
    at = pd.Timestamp(latest, tz="UTC")
    store = get_store(settings)
    service = store.get_feature_service(SERVICE)
    refs = [f"{p.name}:{f.name}" for p in service.feature_view_projections for f in p.features]
    frame = historical_features(spark, store, pd.DataFrame({"user_id": ids, "event_timestamp": at}), refs)
    frame.columns = [c.split("__", 1)[-1] for c in frame.columns]
    return frame, latest


def _bars(rows: list[tuple[str, float]], unit: str = "", width: int = 420) -> str:
    """A horizontal bar chart as inline SVG."""
    if not rows:
        return "<p>(no data)</p>"
    top = max(v for _, v in rows) or 1.0
    height = 22 * len(rows) + 4
    bars = []
    for n, (label, value) in enumerate(rows):
        length = int((width - 200) * value / top)
        y = 22 * n + 2
        bars.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(label)}</text>'
                    f'<rect x="150" y="{y}" width="{length}" height="16" fill="#4a7bd0"/>'
                    f'<text x="{155 + length}" y="{y + 13}" font-size="11">{value:,.1f}{unit}</text>')  # fmt: skip
    return f'<svg width="{width}" height="{height}" role="img">{"".join(bars)}</svg>'


def build_report(spark: SparkSession, settings: Settings | None = None) -> MarketingReport:
    settings = settings or get_settings()
    users, feature_time = read_service(spark, settings)
    out = settings.reports_dir / "marketing"
    out.mkdir(parents=True, exist_ok=True)
    total_users = len(users)
    sizes = users["segment"].fillna("(unknown)").value_counts()
    revenue = users.groupby(users["segment"].fillna("(unknown)"))["monetary"].sum()
    revenue_share = (100 * revenue / revenue.sum()).fillna(0.0) if revenue.sum() else revenue.iloc[:0]  # no sales
    buyers = users.dropna(subset=["r_score", "f_score"])
    grid = buyers.groupby(["r_score", "f_score"]).size().unstack(fill_value=0) if len(buyers) else None

    first_category = users["top_categories"].map(lambda c: c[0].split(".")[0] if c is not None and len(c) else None)
    users = users.assign(category_l1=first_category)
    affinity = users.dropna(subset=["category_l1"]).groupby(["segment", "category_l1"]).size().reset_index(name="users")

    audiences = write_audiences(users[users["segment"].isin(WIN_BACK_SEGMENTS)], out / "audiences")

    sections = [
        f"<h2>Segment sizes</h2>{_bars([(s, float(n)) for s, n in sizes.items()], ' users')}",
        f"<h2>Revenue share by segment</h2>{_bars([(s, float(v)) for s, v in revenue_share.sort_values(ascending=False).items()], ' %')}",
        "<h2>RFM grid (buyers: recency score × frequency score)</h2>" + (
            grid.to_html(border=0) if grid is not None else "<p>(no buyers)</p>"),
        "<h2>Category affinity by segment (users whose strongest category it is)</h2>" + "".join(
            f"<h3>{html.escape(str(segment))}</h3>"
            + _bars([(c, float(n)) for c, n in group.sort_values("users", ascending=False).head(8)[["category_l1", "users"]].itertuples(index=False)], " users")
            for segment, group in affinity.groupby("segment")),
        "<h2>Audiences</h2>" + ("<ul>" + "".join(
            f'<li><a href="audiences/{stem}.csv">{stem}</a>: {n:,} users (also as Parquet)</li>'
            for stem, n in sorted(audiences.items())) + "</ul>" if audiences else
            "<p>(none: no user of the win-back segments has a known category)</p>"),
    ]  # fmt: skip
    page = out / "index.html"
    staged_page = out / ".index.html.tmp"
    staged_page.write_text(
        f"""<!doctype html><html><head><meta charset="utf-8"><title>shoplake marketing report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Marketing report</h1><p>{total_users:,} users, features as of {feature_time:%Y-%m-%d %H:%M} UTC, read from the
<code>{SERVICE}</code> feature service.</p>{"".join(sections)}</body></html>"""
    )
    staged_page.replace(page)
    return MarketingReport(page, total_users, {str(k): int(v) for k, v in sizes.items()}, audiences)


def write_audiences(win_back: pd.DataFrame, folder: Path) -> dict[str, int]:
    """One audience per top-level category, biggest spenders first. Written aside, then swapped in whole: the
    folder holds exactly this report's audiences, never a campaign list left from an earlier report."""
    staged = Path(tempfile.mkdtemp(prefix=".audiences-", dir=folder.parent))
    try:
        audiences: dict[str, int] = {}
        columns = ["user_id", "segment", "recency_days", "frequency", "monetary", "category_l1", "preferred_brand"]
        for category, group in win_back.dropna(subset=["category_l1"]).groupby("category_l1"):
            stem = audience_stem(str(category))
            export = group[[c for c in columns if c in group]].sort_values("monetary", ascending=False)
            export.to_parquet(staged / f"{stem}.parquet", index=False)
            export.to_csv(staged / f"{stem}.csv", index=False)
            audiences[stem] = len(export)
        replace_folder(staged, folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return audiences


def audience_stem(category: str) -> str:
    """A file name for a category's audience: ``win_back_<category>``, with anything but lowercase letters, digits
    and ``_`` replaced and a hash of the name added where that changed it (categories are the shop's free text)."""
    slug = re.sub(r"[^a-z0-9_]+", "_", category.lower()).strip("_")
    if slug == category:
        return f"win_back_{slug}"
    return "_".join(part for part in ("win_back", slug, hashlib.sha256(category.encode()).hexdigest()[:8]) if part)


def report_summary(report: MarketingReport) -> list[str]:
    lines = [f"marketing report: {report.page} ({report.users:,} users)"]
    lines.append("segments: " + ", ".join(f"{s} {n:,}" for s, n in report.segments.items()))
    if report.audiences:
        lines.append("audiences: " + ", ".join(f"{s} {n:,}" for s, n in sorted(report.audiences.items())))
    return lines
