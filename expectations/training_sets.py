"""Feast training sets: every row labelled 0 or 1 and timed, and no feature column mostly empty — a column that
is null for most rows means its view was not materialized offline for the period, and a model would learn
nothing (or the wrong thing) from it. The ceiling is ``SHOPLAKE_QUALITY_MAX_TRAINING_NULL_RATE``.
"""

from __future__ import annotations

from collections.abc import Iterable

import great_expectations as gx
import great_expectations.expectations as gxe

NAME = "training_set"


def build_suite(feature_columns: Iterable[str], max_null_rate: float) -> gx.ExpectationSuite:
    """The suite for a training set with these feature columns (they depend on the features requested)."""
    return gx.ExpectationSuite(
        name=NAME,
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]),
            gxe.ExpectColumnValuesToNotBeNull(column="event_timestamp"),
            *(gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=1 - max_null_rate) for c in feature_columns),
        ],
    )
