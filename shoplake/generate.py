"""A seeded synthetic shop in the exact REES46 schema, for scale benchmarks.

Items follow a Zipf popularity; each session browses one category (mostly), views items by popularity, and moves
down the funnel (view → cart → purchase, some carts removed). Sessions spread over the days with a daily rhythm.
A small share of rows carries REES46's known dirt (exact duplicates, non-positive prices, empty category or brand)
so the benchmark exercises the cleaning rules. Everything is vectorised with numpy and written with Arrow, one CSV
file per day under ``events/``, plus an item catalogue ``items.jsonl`` with titles and descriptions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from shoplake.errors import ShoplakeError

log = logging.getLogger(__name__)

TAXONOMY = {
    "electronics.smartphone": ("samsung", "apple", "xiaomi", "huawei", "oppo"),
    "electronics.audio.headphone": ("sony", "jbl", "apple", "sennheiser"),
    "electronics.video.tv": ("samsung", "lg", "sony", "philips"),
    "electronics.clocks": ("casio", "garmin", "apple", "xiaomi"),
    "computers.notebook": ("lenovo", "hp", "asus", "acer", "apple"),
    "computers.desktop": ("hp", "dell", "lenovo"),
    "computers.peripherals.mouse": ("logitech", "razer", "a4tech"),
    "appliances.kitchen.refrigerators": ("samsung", "lg", "bosch", "indesit"),
    "appliances.kitchen.mixer": ("bosch", "philips", "elenberg", "kenwood"),
    "appliances.kitchen.kettle": ("tefal", "philips", "bosch", "redmond"),
    "appliances.environment.vacuum": ("samsung", "dyson", "philips", "xiaomi"),
    "appliances.environment.water_heater": ("ariston", "aqua", "thermex"),
    "apparel.shoes": ("nike", "adidas", "puma", "reebok"),
    "apparel.shoes.sneakers": ("nike", "adidas", "newbalance"),
    "apparel.costume": ("adidas", "nike", "zara"),
    "furniture.living_room.sofa": ("ikea", "brw", "divan"),
    "furniture.bedroom.bed": ("ikea", "askona", "ormatek"),
    "kids.toys": ("lego", "hasbro", "mattel"),
    "kids.carriage": ("chicco", "cybex", "peg-perego"),
    "sport.bicycle": ("stels", "forward", "merida"),
    "auto.accessories.player": ("pioneer", "kenwood", "alpine"),
    "construction.tools.drill": ("bosch", "makita", "dewalt"),
    "country_yard.lawn_mower": ("husqvarna", "bosch", "makita"),
    "accessories.bag": ("samsonite", "xiaomi", "wenger"),
    "beauty.skincare": ("shiseido", "loreal", "nivea", "garnier"),
    "beauty.fragrance": ("chanel", "dior", "lancome"),
}
PRICE_MEDIAN = {"electronics": 250.0, "computers": 600.0, "appliances": 180.0, "apparel": 60.0, "furniture": 400.0,
                "kids": 40.0, "sport": 300.0, "auto": 120.0, "construction": 90.0, "country_yard": 250.0,
                "accessories": 50.0, "beauty": 35.0}  # fmt: skip
ADJECTIVES = ("compact", "premium", "classic", "smart", "lightweight", "durable", "wireless", "eco", "pro", "mini")
COLOURS = ("black", "white", "silver", "red", "blue", "green", "grey", "gold")
START = dt.datetime(2019, 10, 1, tzinfo=dt.UTC)

P_CART, P_PURCHASE, P_REMOVE = 0.06, 0.45, 0.12  # per view, per cart, per cart
MEAN_SESSION_VIEWS, MEAN_GAP_SECONDS = 4.0, 45.0
EMPTY_CATEGORY_CODE, EMPTY_BRAND = 0.30, 0.14
DIRT_RATE = 0.0005  # share of rows duplicated, and of cart/purchase rows with a non-positive price


@dataclass(frozen=True)
class GeneratedShop:
    event_files: list[Path]
    catalog_file: Path
    events: int
    items: int
    users: int
    sessions: int


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(weights / weights.sum())


def _uuids(n: int, rng: np.random.Generator) -> pa.Array:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.char.mod("%02x", raw).reshape(n, 16)
    parts = [hexed[:, a:b] for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 16))]
    return pa.array(["-".join("".join(p) for p in row) for row in zip(*(p.tolist() for p in parts), strict=True)])


def _catalog(n_items: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    categories = np.array(list(TAXONOMY))
    category_weights = _zipf_weights(len(categories), 0.8, rng)
    item_category = rng.choice(len(categories), size=n_items, p=category_weights)
    order = np.argsort(item_category, kind="stable")  # items grouped by category, for per-category sampling
    item_category = item_category[order]
    brand_pick = rng.random(n_items)
    brands = np.array(
        [
            TAXONOMY[categories[c]][int(b * len(TAXONOMY[categories[c]]))]
            for c, b in zip(item_category, brand_pick, strict=True)
        ]
    )
    medians = np.array([PRICE_MEDIAN[categories[c].split(".")[0]] for c in item_category])
    prices = np.round(medians * rng.lognormal(0.0, 0.6, n_items), 2).clip(0.5, 5000)
    category_ids = 2053013552000000000 + np.array([zlib.crc32(c.encode()) % 10**9 for c in categories])[item_category]
    # ids that look like REES46's (7-8 digits), stable for a seed
    item_ids = rng.choice(np.arange(1_000_000, 1_000_000 + n_items * 20), size=n_items, replace=False)
    return {"item_id": item_ids, "category": categories[item_category], "category_index": item_category,
            "category_id": category_ids, "brand": brands, "price": prices,
            "popularity": _zipf_weights(n_items, 1.05, rng)}  # fmt: skip


def _sample_items_in_category(
    catalog: dict[str, np.ndarray], categories: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each requested category, an item of that category drawn by popularity (one vectorised searchsorted)."""
    category_index, popularity = catalog["category_index"], catalog["popularity"]
    n_categories = int(category_index.max()) + 1
    totals = np.bincount(category_index, weights=popularity, minlength=n_categories)
    within = np.cumsum(popularity) - np.repeat(
        np.cumsum(totals) - totals, np.bincount(category_index, minlength=n_categories)
    )
    keys = category_index + within / totals[category_index]  # strictly increasing: category + cumulative share
    empty = totals[categories] == 0
    categories = np.where(empty, category_index[0], categories)
    picks = np.searchsorted(keys, categories + rng.random(len(categories)) * (1 - 1e-12), side="right")
    return np.minimum(picks, len(keys) - 1)


@dataclass(frozen=True)
class _Draw:
    item: np.ndarray  # index into the catalogue
    session: np.ndarray  # index into session_user
    when: np.ndarray  # seconds since START, sorted
    event_type: np.ndarray  # 0 view, 1 cart, 2 remove_from_cart, 3 purchase
    session_user: np.ndarray


def _draw_sessions(
    catalog: dict[str, np.ndarray],
    user_ids: np.ndarray,
    user_weights: np.ndarray,
    n_views: int,
    days: int,
    rng: np.random.Generator,
) -> _Draw:
    """Sessions of about ``n_views`` views in all, with their funnel steps, inside the ``days`` span."""
    n_sessions = max(1, int(n_views / MEAN_SESSION_VIEWS))
    session_views = rng.geometric(1 / MEAN_SESSION_VIEWS, n_sessions)
    session_views = session_views[: np.searchsorted(np.cumsum(session_views), n_views) + 1]
    n_sessions = len(session_views)
    session_user = rng.choice(user_ids, size=n_sessions, p=user_weights)
    day = rng.integers(0, days, n_sessions)
    second_of_day = (rng.beta(2.2, 1.6, n_sessions) * 86_400).astype(np.int64)  # busier evenings
    session_start = day * 86_400 + second_of_day
    focus = _sample_items_in_category(
        catalog, rng.choice(catalog["category_index"], n_sessions, p=catalog["popularity"]), rng
    )
    focus_category = catalog["category_index"][focus]

    session_of_view = np.repeat(np.arange(n_sessions), session_views)
    stray = rng.random(len(session_of_view)) < 0.2  # one view in five leaves the session's category
    view_category = np.where(
        stray,
        rng.choice(catalog["category_index"], len(session_of_view), p=catalog["popularity"]),
        focus_category[session_of_view],
    )
    view_item = _sample_items_in_category(catalog, view_category, rng)
    gaps = rng.exponential(MEAN_GAP_SECONDS, len(session_of_view))
    first_of_session = np.r_[0, np.cumsum(session_views)[:-1]]
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[first_of_session] - gaps[first_of_session], session_views)
    view_time = session_start[session_of_view] + elapsed.astype(np.int64)

    carted = np.flatnonzero(rng.random(len(view_item)) < P_CART)
    bought = carted[rng.random(len(carted)) < P_PURCHASE]
    removed = carted[rng.random(len(carted)) < P_REMOVE]
    base = np.concatenate([np.arange(len(view_item)), carted, bought, removed])
    event_type = np.concatenate([np.zeros(len(view_item), np.int8), np.ones(len(carted), np.int8),
                                 np.full(len(bought), 3, np.int8), np.full(len(removed), 2, np.int8)])  # fmt: skip
    delay = np.concatenate([np.zeros(len(view_item)), rng.exponential(60, len(carted)),
                            rng.exponential(300, len(bought)) + 60, rng.exponential(120, len(removed)) + 30])  # fmt: skip
    when = view_time[base] + delay.astype(np.int64)
    inside = when < days * 86_400  # a funnel step delayed past the last day is not part of this span
    base, event_type, when = base[inside], event_type[inside], when[inside]
    order = np.argsort(when, kind="stable")
    base = base[order]
    return _Draw(view_item[base], session_of_view[base], when[order], event_type[order], session_user)


def generate_shop(out: Path, *, events: int, days: int, items: int, seed: int = 46) -> GeneratedShop:
    """Write ``events`` behaviour rows over ``days`` days and a catalogue of ``items`` items under ``out``."""
    if events <= 0 or days <= 0 or items <= 0:
        raise ShoplakeError(f"events, days and items must be positive (got {events}, {days}, {items})")
    rng = np.random.default_rng(seed)
    (out / "events").mkdir(parents=True, exist_ok=True)
    catalog = _catalog(items, rng)
    n_users = max(10, events // 25)
    user_ids = rng.choice(np.arange(500_000_000, 500_000_000 + n_users * 10), size=n_users, replace=False)
    user_weights = _zipf_weights(n_users, 0.9, rng)

    funnel = 1 + P_CART * (1 + P_PURCHASE + P_REMOVE)
    for oversample in (1.05, 1.3, 2.0, 4.0):  # funnel steps delayed past the last day are lost; draw more if short
        draw = _draw_sessions(catalog, user_ids, user_weights, int(events / funnel * oversample) + 10, days, rng)
        if len(draw.when) >= events:
            break
    else:
        raise RuntimeError(f"generator could not draw {events} events in {days} days")
    chosen = np.sort(rng.choice(len(draw.when), size=events, replace=False))  # time order is kept
    item, session, when, event_type = (
        draw.item[chosen],
        draw.session[chosen],
        draw.when[chosen],
        draw.event_type[chosen],
    )
    session_user, n_sessions = draw.session_user, len(draw.session_user)

    duplicated = rng.random(events) < DIRT_RATE  # exact duplicate rows, as REES46 has
    keep = np.sort(np.r_[np.arange(events), np.flatnonzero(duplicated)], kind="stable")[:events]
    item, session, when, event_type = item[keep], session[keep], when[keep], event_type[keep]
    price = catalog["price"][item].copy()
    bad_price = (event_type != 0) & (rng.random(len(price)) < DIRT_RATE * 20)
    price[bad_price] = 0.0
    category_code = np.where(rng.random(len(item)) < EMPTY_CATEGORY_CODE, "", catalog["category"][item])
    brand = np.where(rng.random(len(item)) < EMPTY_BRAND, "", catalog["brand"][item])
    session_ids = _uuids(n_sessions, rng)
    type_names = pa.array(["view", "cart", "remove_from_cart", "purchase"])

    timestamps = pa.array((START.timestamp() + when).astype("datetime64[s]"), pa.timestamp("s"))
    table = pa.table({
        "event_time": pc.strftime(timestamps, format="%Y-%m-%d %H:%M:%S UTC"),
        "event_type": pc.take(type_names, pa.array(event_type.astype(np.int32))),
        "product_id": pa.array(catalog["item_id"][item]),
        "category_id": pa.array(catalog["category_id"][item]),
        "category_code": pa.array(category_code),
        "brand": pa.array(brand),
        "price": pc.cast(pa.array(price), pa.decimal128(12, 2)),
        "user_id": pa.array(session_user[session]),
        "user_session": pc.take(session_ids, pa.array(session)),
    })  # fmt: skip

    files = []
    day_of_event = when // 86_400
    bounds = np.searchsorted(day_of_event, np.arange(days + 1))
    for d in range(days):
        if bounds[d + 1] == bounds[d]:
            continue
        path = out / "events" / f"events-{(START + dt.timedelta(days=d)):%Y-%m-%d}.csv"
        with path.open("wb") as handle:
            handle.write((",".join(table.column_names) + "\n").encode())
            pacsv.write_csv(table.slice(bounds[d], bounds[d + 1] - bounds[d]), handle,
                            pacsv.WriteOptions(quoting_style="none", include_header=False))  # fmt: skip
        files.append(path)
    catalog_file = out / "items.jsonl"
    _write_catalog(catalog, catalog_file, rng)
    # what the files hold, not the pools drawn from (5 events had said "10 users")
    n_sessions, n_users = len(np.unique(session)), len(np.unique(session_user[session]))
    log.info("generated %d events, %d sessions, %d users, %d items in %s", len(item), n_sessions, n_users, items, out)
    return GeneratedShop(files, catalog_file, len(item), items, n_users, n_sessions)


def _write_catalog(catalog: dict[str, np.ndarray], path: Path, rng: np.random.Generator) -> None:
    adjective = rng.choice(ADJECTIVES, len(catalog["item_id"]))
    colour = rng.choice(COLOURS, len(catalog["item_id"]))
    model = rng.integers(100, 9999, len(catalog["item_id"]))
    with path.open("w", encoding="utf-8") as handle:
        for i, item_id in enumerate(catalog["item_id"]):
            category = str(catalog["category"][i])
            noun = category.split(".")[-1].replace("_", " ")
            brand = str(catalog["brand"][i])
            record = {
                "item_id": int(item_id),
                "title": f"{brand.title()} {adjective[i]} {noun} {model[i]}",
                "description": f"A {adjective[i]} {colour[i]} {noun} by {brand.title()}. "
                f"Part of our {category.replace('.', ' / ')} range, model {model[i]}.",
                "category_code": category,
                "brand": brand,
                "price": float(catalog["price"][i]),
                "attributes": {"colour": str(colour[i]), "model": int(model[i])},
            }
            handle.write(json.dumps(record) + "\n")
