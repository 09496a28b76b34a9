"""Column expressions that more than one job needs, so every stage parses the same way."""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

# REES46 writes "2019-10-01 00:00:03 UTC" (a zone name); other shops send ISO-8601 ("T" or a space, up to nine
# fraction digits, "Z" or an offset as +02:00, +0200 or +02 — PostgreSQL's and Python's text) or naive UTC times.
EVENT_TIME_FORMATS = (
    "yyyy-MM-dd HH:mm:ss z",
    "yyyy-MM-dd['T'][ ]HH:mm:ss[.SSSSSSSSS][ ][XXX][XX][X]",
)

# Event types as shops send them (lower-cased, trimmed) → the canonical type. Silver normalises with this map.
EVENT_TYPE_SYNONYMS = {
    "view": "view", "detail": "view", "pageview": "view", "product_view": "view",
    "cart": "cart", "addtocart": "cart", "add_to_cart": "cart",
    "remove_from_cart": "remove_from_cart", "removefromcart": "remove_from_cart",
    "purchase": "purchase", "transaction": "purchase", "buy": "purchase", "order": "purchase",
}  # fmt: skip
KNOWN_RAW_EVENT_TYPES = frozenset(EVENT_TYPE_SYNONYMS)

# A comma outside double quotes: the lookahead sees an even number of quotes up to the end of the line.
CSV_FIELD_SEPARATOR = ',(?=(?:[^"]*"[^"]*")*[^"]*$)'


def parse_event_time(column: str | Column) -> Column:
    """The event time in UTC, or null when no known format matches (the session time zone is UTC)."""
    text = F.trim(F.col(column) if isinstance(column, str) else column)
    return F.coalesce(*(F.try_to_timestamp(text, F.lit(fmt)) for fmt in EVENT_TIME_FORMATS))


def blank_to_null(column: str | Column) -> Column:
    """Trimmed text, with empty strings as null: shops write "" and null for the same missing value."""
    trimmed = F.trim(F.col(column) if isinstance(column, str) else column)
    return F.when(trimmed == "", None).otherwise(trimmed)


def finite_number(column: str | Column) -> Column:
    """The text as a double, or null where it is no finite number. Spark reads "NaN", "Infinity" and "1e400" as
    doubles, and NaN compares above every number: a purchase at "NaN" passed as priced and made spend NaN."""
    value = (F.col(column) if isinstance(column, str) else column).try_cast("double")
    return F.when(F.abs(value) < F.lit(float("inf")), value)  # NaN, above every number, fails it too


def category_path(column: str | Column) -> Column:
    """A category path in the lower-case dotted form that the taxonomy, the category levels and the item texts
    split: REES46 writes ``electronics.audio.headphone``; catalogue feeds and Google's product taxonomy write
    ``Electronics > Audio > Headphones``, which becomes ``electronics.audio.headphones`` (an empty level is
    dropped). Only a path with a ``>`` goes through the regular expressions."""
    text = F.lower(blank_to_null(column))
    dotted = F.regexp_replace(F.regexp_replace(text, r"\s*[>.]\s*", "."), r"\.{2,}", ".")
    dotted = F.regexp_replace(dotted, r"^\.|\.$", "")
    return F.when(F.instr(text, ">") == 0, text).when(dotted != "", dotted)


def csv_field_count(line: str | Column) -> Column:
    """How many fields a CSV line holds; the quote-aware split runs only on lines that contain a quote."""
    value = F.col(line) if isinstance(line, str) else line
    return (
        F.when(F.instr(value, '"') == 0, F.size(F.split(value, ",", -1)))
        .otherwise(F.size(F.split(value, CSV_FIELD_SEPARATOR, -1)))
        .cast("int")
    )
