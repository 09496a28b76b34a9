"""Knowledge-graph edges: every endpoint is a node, relations come from the known set, weights lie in the range
their relation defines (cosine in [-1, 1], catalog edges 1, lift positive), and no item is SIMILAR_TO itself.
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from shoplake.catalog import KG_EDGES
from spark_jobs.knowledge_graph import RELATIONS

COSINE_RELATIONS = ("SIMILAR_TO", "HAS_CONCEPT")
CATALOG_RELATIONS = ("IN_CATEGORY", "SUBCATEGORY_OF", "HAS_BRAND")

suite = gx.ExpectationSuite(
    name=KG_EDGES.name,
    expectations=[
        gxe.ExpectColumnValuesToBeInSet(column="relation", value_set=list(RELATIONS)),
        gxe.ExpectColumnValuesToBeInSet(column="source", value_set=["catalog", "behaviour", "embedding"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["src", "relation", "dst"]),
        gxe.ExpectColumnValuesToBeInSet(column="src_is_node", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="dst_is_node", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="weight_in_range", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="similar_to_itself", value_set=[False]),
    ],
)


def weight_in_range() -> Column:
    weight, relation = F.col("weight"), F.col("relation")
    return (
        F.when(relation.isin(*COSINE_RELATIONS), weight.between(-1.0 - 1e-6, 1.0 + 1e-6))
        .when(relation.isin(*CATALOG_RELATIONS), weight == 1.0)
        .otherwise(weight > 0)
    )


def prepare(edges: DataFrame, *, nodes: DataFrame) -> DataFrame:
    ids = nodes.select("node_id")
    src = ids.select(F.col("node_id").alias("src"), F.lit(True).alias("src_is_node"))
    dst = ids.select(F.col("node_id").alias("dst"), F.lit(True).alias("dst_is_node"))
    return (
        edges.join(src, on="src", how="left")
        .join(dst, on="dst", how="left")
        .select(
            "src", "relation", "dst", "weight", "source",
            F.coalesce("src_is_node", F.lit(False)).alias("src_is_node"),
            F.coalesce("dst_is_node", F.lit(False)).alias("dst_is_node"),
            F.coalesce(weight_in_range(), F.lit(False)).alias("weight_in_range"),
            ((F.col("relation") == "SIMILAR_TO") & (F.col("src") == F.col("dst"))).alias("similar_to_itself"),
        )
    )  # fmt: skip
