"""The items table: a catalogue lands as given; events fill in the rest without overriding the catalogue."""

from __future__ import annotations

import datetime as dt
import gzip
import json

import pytest

from shoplake import storage
from shoplake.catalog import SILVER_EVENTS
from shoplake.errors import InputError
from spark_jobs import items

AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def write_catalog(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def silver_events(spark, rows):
    """rows: (item, minutes, category_code, brand, price)."""
    data = [
        (f"e{n}", dt.datetime(2019, 10, 1, 10, minute), "view", item, 42, code, brand, price, 7, "s", "s", False,
         "f", n, "c", "r", AT, dt.date(2019, 10, 1))
        for n, (item, minute, code, brand, price) in enumerate(rows)
    ]  # fmt: skip
    return spark.createDataFrame(data, SILVER_EVENTS.schema)


def test_a_json_lines_catalogue_lands_typed(spark, lake, tmp_path):
    path = write_catalog(tmp_path / "items.jsonl", [
        {"item_id": 1, "title": "Sony WH-1000XM4", "description": "Noise-cancelling headphones",
         "category_code": "Electronics.Audio.Headphone", "brand": "Sony", "price": 349.0,
         "attributes": {"colour": "black"}},
        {"item_id": "2", "title": " ", "price": "n/a", "category_code": "Home & Garden > Lighting"},
    ])  # fmt: skip
    result = items.land_catalog(spark, path, run_id="r", updated_at=AT)
    assert result.rows == 2
    got = {r.item_id: r for r in storage.read_table(spark, "items").collect()}
    assert (got[1].category_code, got[1].brand, got[1].price, got[1].source) == (
        "electronics.audio.headphone",
        "sony",
        349.0,
        "catalog",
    )
    assert json.loads(got[1].attributes) == {"colour": "black"}
    assert (got[2].title, got[2].price, got[2].category_code) == (None, None, "home & garden.lighting")


def test_a_csv_catalogue_with_quoted_commas_and_newlines(spark, lake, tmp_path):
    path = tmp_path / "items.csv"
    path.write_text('item_id,title,description,category_code,brand,price,attributes\n'
                    '5,"Kettle, 1.7 l","Boils fast.\nAuto off.",appliances.kitchen.kettle,tefal,29.9,"{""watts"": 2200}"\n')  # fmt: skip
    items.land_catalog(spark, str(path), run_id="r", updated_at=AT)
    (row,) = storage.read_table(spark, "items").collect()
    assert (row.item_id, row.title, row.description) == (5, "Kettle, 1.7 l", "Boils fast.\nAuto off.")
    assert json.loads(row.attributes) == {"watts": 2200}


@pytest.mark.parametrize(
    ("records", "message"),
    [([{"item_id": "abc"}], "1 catalogue rows have an item_id that is not an integer, e.g. \\['abc'\\]"),
     ([{"item_id": 1}, {"item_id": 1}], "item_id given more than once, e.g. \\[1\\]"),
     ([{"item_id": 2, "price": "12,50"}, {"item_id": 3, "price": "N/A"}],
      "1 catalogue rows have a price that is not a finite number, e.g. \\['12,50'\\]"),
     # Spark reads these as doubles; NaN compares above every number, and landed as the item's price
     ([{"item_id": 4, "price": "NaN"}, {"item_id": 5, "price": "Infinity"}],
      "2 catalogue rows have a price that is not a finite number, e.g. \\['NaN', 'Infinity'\\]"),
     ([{"item_id": 6, "price": -5}, {"item_id": 7, "price": 0}],
      "1 catalogue rows have a negative price, e.g. \\['-5'\\]")],
)  # fmt: skip
def test_a_bad_catalogue_is_refused_whole(spark, lake, tmp_path, records, message):
    path = write_catalog(tmp_path / "items.jsonl", [{"item_id": 9, "title": "fine"}, *records])
    with pytest.raises(InputError, match=message):
        items.land_catalog(spark, path, run_id="r", updated_at=AT)
    assert storage.table_version("items") is None


def test_a_truncated_gzip_catalogue_is_refused_by_name(spark, lake, tmp_path):
    records = "".join(json.dumps({"item_id": i, "title": f"item {i}"}) + "\n" for i in range(20_000))
    whole = gzip.compress(records.encode())
    cut = tmp_path / "items.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=rf"{cut}: unreadable \(.*Unexpected end of input stream"):
        items.land_catalog(spark, str(cut), run_id="r", updated_at=AT)
    assert storage.table_version("items") is None


def test_events_fill_in_items_but_never_override_the_catalogue(spark, lake, tmp_path):
    path = write_catalog(tmp_path / "items.jsonl", [
        {"item_id": 1, "title": "From the catalogue", "brand": "acme"},
        {"item_id": 3, "title": "Complete", "brand": "b", "category_code": "c.d", "price": "1.5"},
    ])  # fmt: skip
    items.land_catalog(spark, path, run_id="r", updated_at=AT)
    events = silver_events(spark, [
        (1, 0, "x.y", "other", 5.0),  # the catalogue's item: its brand stays, what it lacks comes from here
        (2, 0, "kids.toys", "lego", 10.0),
        (2, 5, None, None, 12.0),  # later, without category or brand: the latest known ones stay
        (3, 0, "e.f", "other", 9.0),  # the catalogue says all but the shop's category id: only that is added
    ])  # fmt: skip
    later = AT + dt.timedelta(days=1)
    items.refresh_items_from_events(spark, events, run_id="r", updated_at=later)
    got = {r.item_id: r for r in storage.read_table(spark, "items").collect()}
    assert (got[1].title, got[1].brand, got[1].source) == ("From the catalogue", "acme", "catalog")
    filled, complete = (got[1].category_code, got[1].category_id, got[1].price), got[3]
    assert filled == ("x.y", 42, 5.0) and got[1].updated_at == later.replace(tzinfo=None)
    assert (complete.category_code, complete.brand, complete.price, complete.category_id) == ("c.d", "b", 1.5, 42)
    assert (got[2].category_code, got[2].brand, got[2].price, got[2].category_id, got[2].source) == (
        "kids.toys", "lego", 12.0, 42, "events",
    )  # fmt: skip


def test_each_column_takes_its_latest_known_value_and_equal_times_take_the_larger(spark):
    events = silver_events(spark, [
        (1, 0, "a.old", "zeta", 5.0),
        (1, 9, "a.new", None, None),  # latest: its category wins; its missing brand and price do not
        (1, 3, None, "beta", 7.0),
        (2, 4, "b.one", "alpha", 3.0),
        (2, 4, "b.two", "alpha", 1.0),  # same minute: the larger value of each column
        (3, 1, None, None, None),  # nothing known at all
    ])  # fmt: skip
    got = {r.item_id: r for r in items.transform_latest_values(events, ("category_code", "brand", "price")).collect()}
    assert (got[1].category_code, got[1].brand, got[1].price) == ("a.new", "beta", 7.0)
    assert (got[2].category_code, got[2].brand, got[2].price) == ("b.two", "alpha", 3.0)
    assert (got[3].category_code, got[3].brand, got[3].price) == (None, None, None)
