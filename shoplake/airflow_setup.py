"""Prepare Airflow for shoplake's DAGs: the metadata database and the pools the DAGs use.

``python -m shoplake.airflow_setup`` (``make airflow-init``) migrates the database of ``$AIRFLOW_HOME`` and creates
the pools; running it again changes nothing. The DAG folder and other settings come from Airflow's own
environment variables (see the README); this module only adds what shoplake's DAGs need.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO / "dags"
# name → (slots, description). One slot for the GPU: two embedding tasks on one card would fight over its memory.
POOLS = {"gpu": (1, "Tasks that use the GPU (item embeddings); one at a time. Falls back to CPU without a GPU.")}


def airflow_environment(home: Path) -> dict[str, str]:
    """The Airflow settings shoplake runs with locally: SQLite metadata, LocalExecutor, this repo's DAGs."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }


def ensure_pools() -> None:
    from airflow.models.pool import Pool

    for name, (slots, description) in POOLS.items():
        Pool.create_or_update_pool(name, slots, description, include_deferred=False)
        log.info("pool %s: %d slot(s)", name, slots)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True)
    ensure_pools()


if __name__ == "__main__":
    main()
