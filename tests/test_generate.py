"""The synthetic shop is REES46-shaped, exact in size and reproducible."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from shoplake.catalog import EVENT_TYPES, RAW_EVENT_COLUMNS
from shoplake.errors import ShoplakeError
from shoplake.generate import generate_shop


def digest(paths):
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def test_exact_size_schema_and_span(tmp_path):
    shop = generate_shop(tmp_path, events=20_000, days=14, items=500, seed=1)
    assert len(shop.event_files) == 14
    first_line = shop.event_files[0].read_text().split("\n", 1)[0]
    assert first_line == ",".join(RAW_EVENT_COLUMNS)
    table = pa.concat_tables(
        pacsv.read_csv(
            p, convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in RAW_EVENT_COLUMNS})
        )
        for p in shop.event_files
    )
    assert table.num_rows == shop.events == 20_000
    assert (shop.users, shop.sessions) == (
        len(set(table["user_id"].to_pylist())),
        len(set(table["user_session"].to_pylist())),
    )
    assert set(table["event_type"].to_pylist()) <= set(EVENT_TYPES)
    assert table["event_time"][0].as_py().endswith(" UTC")
    assert shop.event_files[0].name == "events-2019-10-01.csv"


def test_the_same_seed_writes_the_same_bytes(tmp_path):
    a = generate_shop(tmp_path / "a", events=5_000, days=3, items=100, seed=7)
    b = generate_shop(tmp_path / "b", events=5_000, days=3, items=100, seed=7)
    c = generate_shop(tmp_path / "c", events=5_000, days=3, items=100, seed=8)
    assert digest(a.event_files + [a.catalog_file]) == digest(b.event_files + [b.catalog_file])
    assert digest(a.event_files) != digest(c.event_files)


def test_popularity_is_skewed_and_sessions_stay_in_one_user(tmp_path):
    shop = generate_shop(tmp_path, events=30_000, days=7, items=2_000, seed=3)
    table = pa.concat_tables(pacsv.read_csv(p) for p in shop.event_files)
    views = Counter(table["product_id"].to_pylist())
    top_1_percent = sum(n for _, n in views.most_common(20))
    assert top_1_percent / sum(views.values()) > 0.10  # Zipf: the top 1% of items draw far more than 1%
    users_per_session = Counter()
    for session, _user in set(zip(table["user_session"].to_pylist(), table["user_id"].to_pylist(), strict=True)):
        users_per_session[session] += 1
    assert max(users_per_session.values()) == 1


def test_catalogue_has_titles_descriptions_and_attributes(tmp_path):
    shop = generate_shop(tmp_path, events=1_000, days=1, items=50, seed=2)
    records = [json.loads(line) for line in shop.catalog_file.read_text().splitlines()]
    assert len(records) == 50 and len({r["item_id"] for r in records}) == 50
    assert all(
        r["title"] and r["description"] and r["category_code"] and isinstance(r["attributes"], dict) for r in records
    )


def test_sizes_that_are_not_positive_are_refused_in_one_line(tmp_path):
    with pytest.raises(ShoplakeError, match=r"must be positive \(got 0, 1, 10\)"):
        generate_shop(tmp_path, events=0, days=1, items=10)
