"""Silver events: the keys every later stage joins on are present, each event is there once, purchases have a
price, times fall inside the dates the run rebuilt, the quarantine stays below a ceiling (a sudden jump means
the shop changed its export, which people must look at before features move), and the dates hold some event.

Silver is the biggest table a gate reads, so its audit is built for one pass per metric without caching the table:
uniqueness of ``event_id`` (a shuffle) is decided once by a group-by in ``prepare``, and every row is marked by a
join against the duplicated ids — normally none, so the join is a broadcast of an empty table.
"""

from __future__ import annotations

import datetime as dt

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shoplake.catalog import SILVER_EVENTS

suite = gx.ExpectationSuite(
    name=SILVER_EVENTS.name,
    expectations=[
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_id", "product_id", "event_time", "session_id")),
        gxe.ExpectColumnValuesToBeInSet(column="event_id_is_unique", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(
            column="event_type", value_set=["view", "cart", "remove_from_cart", "purchase"]
        ),
        gxe.ExpectColumnValuesToBeInSet(column="purchase_has_price", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="inside_run_window", value_set=[True]),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="quarantine_ceiling", column_B="quarantine_share", or_equal=True
        ),
        # Every rule above reads rows: on none they all pass. A run whose every row was quarantined (a shop that
        # changed its time format) passed the quarantine ceiling too, and gold then moved without it.
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ],
)


def prepare(
    events: DataFrame, *, first: dt.date, last: dt.date, quarantine_share: float, quarantine_ceiling: float
) -> DataFrame:
    """Silver rows of the run's dates with the audit columns the suite checks."""
    is_purchase = F.col("event_type") == "purchase"
    in_window = F.to_date("event_time").between(first, last) & (F.col("event_date") == F.to_date("event_time"))
    scope = events.filter(F.col("event_date").between(first, last))
    return mark_duplicated_ids(scope).select(
        "event_id", "event_type", "user_id", "product_id", "event_time", "session_id", "price",
        "event_id_is_unique",
        (~is_purchase | (F.col("price") > 0)).alias("purchase_has_price"),
        in_window.alias("inside_run_window"),
        F.lit(quarantine_share).alias("quarantine_share"),
        F.lit(quarantine_ceiling).alias("quarantine_ceiling"),
    )  # fmt: skip


def mark_duplicated_ids(events: DataFrame, broadcast_limit: int = 100_000) -> DataFrame:
    """``event_id_is_unique`` per row. The duplicated ids are found now, in one job; up to ``broadcast_limit`` of
    them join as a local table (no shuffle of the events), more — a badly broken run — through a shuffle join."""
    duplicated = events.groupBy("event_id").count().filter(F.col("count") > 1).select("event_id")
    found = duplicated.limit(broadcast_limit + 1).collect()
    if len(found) <= broadcast_limit:
        duplicated = F.broadcast(events.sparkSession.createDataFrame(found, "event_id string"))
    marked = duplicated.withColumn("event_id_is_unique", F.lit(False))
    return events.join(marked, on="event_id", how="left").withColumn(
        "event_id_is_unique", F.coalesce(F.col("event_id_is_unique"), F.lit(True))
    )
