"""Gold user features: RFM scores on their 1–5 scale, segments from the known set, one row per user, category
shares that are shares (each in [0, 1], together at most 1).
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.metadata_types import FailureSeverity
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shoplake.catalog import USER_FEATURES
from spark_jobs.user_features import SEGMENTS

WARNING = FailureSeverity.WARNING

suite = gx.ExpectationSuite(
    name=USER_FEATURES.name,
    expectations=[
        gxe.ExpectColumnValuesToBeUnique(column="user_id"),
        *(
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=1, max_value=5)
            for c in ("r_score", "f_score", "m_score")
        ),
        gxe.ExpectColumnValuesToBeInSet(column="segment", value_set=list(SEGMENTS)),
        gxe.ExpectColumnValuesToNotBeNull(column="segment"),
        gxe.ExpectColumnValuesToBeBetween(column="smallest_share", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="largest_share", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="share_total", min_value=0, max_value=1 + 1e-9),
        gxe.ExpectColumnValuesToBeBetween(column="recency_days", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="view_to_purchase_rate", min_value=0, max_value=1, severity=WARNING),
    ],
)


def prepare(users: DataFrame) -> DataFrame:
    shares = F.col("top_category_shares")
    return users.select(
        "user_id", "r_score", "f_score", "m_score", "segment", "recency_days", "view_to_purchase_rate",
        F.array_min(shares).alias("smallest_share"),
        F.array_max(shares).alias("largest_share"),
        F.aggregate(shares, F.lit(0.0), lambda total, x: total + x).alias("share_total"),
    )  # fmt: skip
