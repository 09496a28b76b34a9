"""
# shoplake_marketing

Runs whenever `shoplake_daily` has published new features to Feast (the `shoplake://feast/features` asset): builds
the marketing report — segment sizes, revenue share, RFM grid, category affinity by segment — from the
`marketing_analytics_v1` feature service, and exports win-back audiences (at-risk users per top category) as
Parquet and CSV under `$SHOPLAKE_HOME/reports/marketing/`.

**Triage a failure**: the log names what is missing. "user_features is empty": the daily DAG has not published
yet (not retried). A feature-store error: the registry or online store is unreachable (retried) — fix it and clear
the task; the report is rebuilt whole, so a rerun is safe.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
from airflow.sdk import Asset, dag

from shoplake.airflow_tasks import stage_task
from shoplake.orchestration import FEATURES_ONLINE_URI


@dag(
    dag_id="shoplake_marketing",
    schedule=[Asset(FEATURES_ONLINE_URI)],
    start_date=pendulum.datetime(2019, 10, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["shoplake", "marketing", "reports"],
    doc_md=__doc__,
    default_args={"owner": "shoplake", "retries": 2, "retry_delay": dt.timedelta(seconds=30)},
)
def shoplake_marketing() -> None:
    @stage_task()
    def marketing_report() -> dict[str, Any]:
        from shoplake import orchestration

        return orchestration.marketing_report().log()

    marketing_report()


shoplake_marketing()
