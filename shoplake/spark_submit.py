"""Run a ``spark_jobs`` module through ``spark-submit`` against ``SHOPLAKE_SPARK_MASTER``: how Airflow hands silver
and gold to a cluster when ``SHOPLAKE_SPARK_SUBMIT=true`` (the default runs them in the task's own local session).

pyspark ships ``bin/spark-submit``; the job's stdout and stderr go to the log line by line, so an Airflow task log
shows the driver's progress, and a non-zero exit is an error that carries the last lines of output. A job that
stops on an error of its data (``DataError``) exits with ``DATA_ERROR_EXIT``, and the error comes back as a
``DataError``, which Airflow does not retry — it would fail the same way.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from shoplake.errors import DataError, ShoplakeError
from shoplake.settings import Settings, get_settings

log = logging.getLogger(__name__)
JOBS = Path(__file__).resolve().parent.parent / "spark_jobs"
DATA_ERROR_EXIT = 65  # sysexits.h's EX_DATAERR


def run_as_job(main: Callable[[], None]) -> None:
    """A ``spark_jobs`` module's entry point: an error of the data exits with ``DATA_ERROR_EXIT`` (traceback
    printed), so that ``submit_job`` can tell it from a failure of the cluster."""
    try:
        main()
    except DataError:
        traceback.print_exc()
        sys.exit(DATA_ERROR_EXIT)


def spark_submit_path() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-submit"


def submit_job(
    job: str,
    *args: str,
    settings: Settings | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout_seconds: int = 6 * 3600,
) -> str:
    """``spark-submit spark_jobs/<job>.py ARGS`` on the configured master; returns the job's stdout."""
    settings = settings or get_settings()
    script = JOBS / f"{job}.py"
    if not script.is_file():
        raise ShoplakeError(f"no Spark job {job!r} in {JOBS}")
    command = [str(spark_submit_path()), "--master", settings.spark_master,
               "--driver-memory", settings.spark_driver_memory]  # fmt: skip
    for key, value in settings.spark_conf.items():
        command += ["--conf", f"{key}={value}"]
    env = {**os.environ, "SHOPLAKE_SPARK_MASTER": settings.spark_master, **(extra_env or {})}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    log.info("spark-submit: %s", " ".join([*command, str(script), *args]))
    stdout: list[str] = []
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen([*command, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, cwd=JOBS.parent) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            log.info("%s", line)
            stdout.append(line)
            tail.append(line)
        code = process.wait(timeout=timeout_seconds)
    if code == DATA_ERROR_EXIT:
        raise DataError(f"spark-submit {job}: the job's data is at fault; last lines:\n" + "\n".join(tail))
    if code != 0:
        raise ShoplakeError(f"spark-submit {job} exited with {code}; last lines:\n" + "\n".join(tail))
    return "\n".join(stdout)
