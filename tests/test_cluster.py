"""The jobs run unchanged on a Spark standalone cluster: a master and one worker on localhost, started with
pyspark's own launcher, and silver + gold submitted with ``spark-submit``."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from shoplake import storage
from shoplake.errors import DataError
from shoplake.spark_submit import submit_job
from spark_jobs import bronze
from tests.conftest import SAMPLE_EVENTS

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_worker(ui_port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as response:
                if json.load(response).get("aliveworkers", 0) >= 1:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError("the Spark standalone worker did not register with the master")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    port, ui_port, worker_ui = _free_port(), _free_port(), _free_port()
    logs = tmp_path_factory.mktemp("cluster-logs")
    env = {**os.environ, "SPARK_HOME": str(spark_class.parent.parent), "SPARK_LOCAL_IP": "127.0.0.1"}
    master = subprocess.Popen(
        [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
         "--webui-port", str(ui_port)],
        stdout=(logs / "master.log").open("w"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    worker = subprocess.Popen(
        [str(spark_class), "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}", "--cores", "2",
         "--memory", "2g", "--host", "127.0.0.1", "--webui-port", str(worker_ui), "--work-dir", str(logs / "work")],
        stdout=(logs / "worker.log").open("w"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        _wait_for_worker(ui_port)
        yield f"spark://127.0.0.1:{port}", ui_port
    finally:
        for process in (worker, master):
            process.terminate()
            process.wait(timeout=30)


def spark_submit(master: str, job: str, *args: str, home: Path) -> str:
    from shoplake.settings import Settings

    settings = Settings(home=home, spark_master=master, spark_driver_memory="1g",
                        spark_conf={"spark.executor.memory": "1g"})  # fmt: skip
    return submit_job(job, *args, settings=settings, extra_env={"SHOPLAKE_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"},
                      timeout_seconds=900)  # fmt: skip


def test_silver_and_gold_run_on_a_standalone_cluster(spark, lake, standalone_cluster):
    master, ui_port = standalone_cluster
    bronze.land_event_files(spark, [str(SAMPLE_EVENTS)], run_id="r", ingested_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    out = spark_submit(master, "silver", "--start", "2019-10-01", "--run-id", "cluster", home=lake)
    assert "'kept': 17410" in out
    out = spark_submit(master, "gold", "--date", "2019-10-01", "--run-id", "cluster", home=lake)
    assert "'user_features': 4504" in out
    assert storage.read_table(spark, "silver_events").count() == 17_410
    assert storage.read_table(spark, "item_features").count() == 6_493
    assert "cluster" in {r.run_id for r in storage.read_table(spark, "run_metrics").collect()}
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        finished = [app["name"] for app in json.load(response)["completedapps"]]
    assert sorted(finished) == ["gold", "silver"]  # both ran on the cluster's executors, not in local mode
    # an error of the data comes back as one (Airflow fails the task without retries), not as a failed submit
    with pytest.raises(DataError, match="silver has no events in the 90 days up to it"):
        spark_submit(master, "gold", "--date", "2030-01-01", "--run-id", "cluster", home=lake)
