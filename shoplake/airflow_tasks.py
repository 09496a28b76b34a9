"""The task decorator shoplake's DAGs share: Airflow's ``@task``, except that an error of the data fails at once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException

from shoplake.errors import DataError


def stage_task(**task_args: Any) -> Callable[[Callable[..., Any]], Any]:
    """``@task`` whose data errors fail at once: bad input or a failed gate fails the same way on every retry, so
    only a service's errors (a write conflict, an unreachable store, a lost Spark executor) are retried."""

    def decorate(function: Callable[..., Any]) -> Any:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except DataError as error:
                raise AirflowFailException(f"{type(error).__name__}: {error} (not retried: fix the data)") from error

        return task(**task_args)(run)

    return decorate
