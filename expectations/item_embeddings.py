"""Item embeddings: vectors of the model's dimension, unit length (cosine consumers rely on it), no NaN, and one
row per item and model.
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from shoplake.catalog import ITEM_EMBEDDINGS

NORM_TOLERANCE = 1e-3

suite = gx.ExpectationSuite(
    name=ITEM_EMBEDDINGS.name,
    expectations=[
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["item_id", "model"]),
        gxe.ExpectColumnValuesToBeInSet(column="dim_is_the_models", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="length_is_dim", value_set=[True]),
        gxe.ExpectColumnValuesToBeInSet(column="has_nan", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="l2_norm", min_value=1 - NORM_TOLERANCE, max_value=1 + NORM_TOLERANCE),
    ],
)


def prepare(embeddings: DataFrame, *, model: str, dim: int) -> DataFrame:
    """The current model's rows, with the vector's length, norm and NaN flag."""
    vector = F.col("embedding")
    return embeddings.filter(F.col("model") == model).select(
        "item_id", "model",
        (F.col("dim") == dim).alias("dim_is_the_models"),
        (F.size(vector) == F.col("dim")).alias("length_is_dim"),
        F.exists(vector, lambda x: F.isnan(x)).alias("has_nan"),
        F.sqrt(F.aggregate(vector, F.lit(0.0), lambda total, x: total + x * x)).alias("l2_norm"),
    )  # fmt: skip
