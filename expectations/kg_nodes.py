"""Knowledge-graph nodes: one row per node id, node types from the known set, every node named."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from shoplake.catalog import KG_NODES
from spark_jobs.knowledge_graph import NODE_TYPES

suite = gx.ExpectationSuite(
    name=KG_NODES.name,
    expectations=[
        gxe.ExpectColumnValuesToBeUnique(column="node_id"),
        gxe.ExpectColumnValuesToBeInSet(column="node_type", value_set=list(NODE_TYPES)),
        gxe.ExpectColumnValuesToNotBeNull(column="name"),
    ],
)
