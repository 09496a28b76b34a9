"""Gold item features: smoothed rates are probabilities, popularity ranks are positive and unique overall and
within each category (the recommender's cold-start lists read them as positions).
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.metadata_types import FailureSeverity
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shoplake.catalog import ITEM_FEATURES
from spark_jobs.item_features import UNKNOWN_CATEGORY

WARNING = FailureSeverity.WARNING

suite = gx.ExpectationSuite(
    name=ITEM_FEATURES.name,
    expectations=[
        gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1)
          for c in ("view_to_cart_rate", "view_to_purchase_rate")),
        gxe.ExpectColumnValuesToBeBetween(column="popularity_rank", min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="popularity_rank"),
        gxe.ExpectColumnValuesToBeBetween(column="category_popularity_rank", min_value=1),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["rank_category", "category_popularity_rank"]),
        gxe.ExpectColumnValuesToBeBetween(column="price_min", min_value=0, severity=WARNING),
    ],
)  # fmt: skip


def prepare(items: DataFrame) -> DataFrame:
    return items.select(
        "item_id", "view_to_cart_rate", "view_to_purchase_rate", "popularity_rank", "category_popularity_rank",
        "price_min", F.coalesce("category_code", F.lit(UNKNOWN_CATEGORY)).alias("rank_category"),
    )  # fmt: skip
