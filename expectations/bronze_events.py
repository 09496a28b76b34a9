"""Raw behaviour events as landed in bronze: the events columns must be there; unknown event types only warn,
because silver quarantines them with a reason (a shop that renames an event type should not stop the pipeline).
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.expectations.metadata_types import FailureSeverity

from shoplake.catalog import BRONZE_EVENTS, RAW_EVENT_COLUMNS
from spark_jobs.columns import KNOWN_RAW_EVENT_TYPES

UNKNOWN_EVENT_TYPE_CEILING = 0.01  # above 1% unknown event types, people should look

WARNING = FailureSeverity.WARNING

suite = gx.ExpectationSuite(
    name=BRONZE_EVENTS.name,
    expectations=[
        gxe.ExpectTableColumnsToMatchSet(column_set=list(BRONZE_EVENTS.columns), exact_match=True),
        *(gxe.ExpectColumnToExist(column=column) for column in RAW_EVENT_COLUMNS),
        gxe.ExpectColumnValuesToNotBeNull(column="line_number"),
        gxe.ExpectColumnValuesToNotBeNull(column="file_checksum"),
        gxe.ExpectColumnValuesToBeInSet(
            column="event_type",
            value_set=sorted(KNOWN_RAW_EVENT_TYPES),
            mostly=1 - UNKNOWN_EVENT_TYPE_CEILING,
            severity=WARNING,
        ),
    ],
)
