"""Gold interactions: the implicit score is never negative, the counts describe at least one event and agree
with the first/last times, and every user and item is one the silver events of the history window know (an
orphan means a join went wrong upstream).
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shoplake.catalog import INTERACTIONS

COUNTS = ("views", "carts", "removes", "purchases")

suite = gx.ExpectationSuite(
    name=INTERACTIONS.name,
    expectations=[
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id"]),
        gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in COUNTS),
        gxe.ExpectColumnValuesToBeBetween(column="events", min_value=1),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="last_event_time", column_B="first_event_time", or_equal=True
        ),
        gxe.ExpectColumnValuesToBeInSet(column="user_in_silver", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="item_in_silver", value_set=[True]),
    ],
)


def prepare(interactions: DataFrame, *, history: DataFrame) -> DataFrame:
    """Interactions with their event total and whether the history window's silver events know user and item."""
    users = history.select(F.col("user_id"), F.lit(True).alias("user_in_silver")).distinct()
    items = history.select(F.col("product_id").alias("item_id"), F.lit(True).alias("item_in_silver")).distinct()
    return (
        interactions.join(users, on="user_id", how="left")
        .join(items, on="item_id", how="left")
        .select(
            "user_id", "item_id", "score", *COUNTS, "first_event_time", "last_event_time",
            sum((F.col(c) for c in COUNTS[1:]), F.col(COUNTS[0])).alias("events"),
            F.coalesce("user_in_silver", F.lit(False)).alias("user_in_silver"),
            F.coalesce("item_in_silver", F.lit(False)).alias("item_in_silver"),
        )
    )  # fmt: skip
