"""Feature views over the gold tables, and one on-demand view.

TTLs: gold features are recomputed daily with ``event_timestamp`` at the end of their date, so a value is valid for
3 days — one missed or failed daily run still serves, a longer outage shows as missing features rather than stale
ones. An embedding stays valid until its item's text changes (no expiry).
"""

from datetime import timedelta

import pandas as pd
from feast import FeatureView, Field, RequestSource  # noqa: F401 - RequestSource documented for extension
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, Float64, Int64, String

from feature_repo import data_sources
from feature_repo.entities import category, item, user
from shoplake.encoder import ModelSpec
from shoplake.settings import get_settings

DAILY_TTL = timedelta(days=3)
EMBEDDING_DIM = ModelSpec.from_path(get_settings().model_path).dim

user_profile = FeatureView(
    name="user_profile",
    entities=[user],
    ttl=DAILY_TTL,
    source=data_sources.user_features,
    description="RFM and segment of each user, as of the feature date.",
    schema=[
        Field(name="recency_days", dtype=Int64, description="Days since the last purchase (null: never bought)."),
        Field(name="frequency", dtype=Int64, description="Purchases in the history window."),
        Field(name="monetary", dtype=Float64, description="Money spent in the history window."),
        Field(name="r_score", dtype=Int64, description="Recency quintile score, 1 (long ago) to 5 (recent)."),
        Field(name="f_score", dtype=Int64, description="Frequency quintile score, 1 to 5."),
        Field(name="m_score", dtype=Int64, description="Monetary quintile score, 1 to 5."),
        Field(name="segment", dtype=String, description="RFM segment: champions, loyal, at_risk, browsers, ..."),
        Field(name="price_band", dtype=String, description="Where the user's median price sits among all prices."),
        Field(name="preferred_brand", dtype=String, description="The brand the user interacted with most."),
    ],
)

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=DAILY_TTL,
    source=data_sources.user_features,
    description="How active each user was over the last 1, 7 and 30 days.",
    schema=[
        *(Field(name=f"{kind}_{days}d", dtype=Int64, description=f"{kind.capitalize()} in the last {days} day(s).")
          for kind in ("views", "carts", "removes", "purchases") for days in (1, 7, 30)),
        Field(name="sessions_30d", dtype=Int64, description="Sessions in the last 30 days."),
        Field(name="mean_session_seconds", dtype=Float64, description="Mean session length in seconds."),
        Field(name="view_to_purchase_rate", dtype=Float64, description="Purchases per view, 30 days."),
    ],
)  # fmt: skip

user_category_affinity = FeatureView(
    name="user_category_affinity",
    entities=[user],
    ttl=DAILY_TTL,
    source=data_sources.user_features,
    description="The categories each user engages with most.",
    schema=[
        Field(name="top_categories", dtype=Array(String), description="Top 3 category paths, strongest first."),
        Field(name="top_category_shares", dtype=Array(Float64), description="Their shares of the user's events."),
    ],
)

user_history = FeatureView(
    name="user_history",
    entities=[user],
    ttl=DAILY_TTL,
    source=data_sources.user_items,
    description="What the CF score sums over: the user's strongest items r(u, j), and the items already bought.",
    schema=[
        Field(name="item_ids", dtype=Array(Int64), description="The user's highest-scored items, strongest first."),
        Field(name="item_scores", dtype=Array(Float64), description="Their decayed implicit scores r(u, j)."),
        Field(name="bought_item_ids", dtype=Array(Int64), description="Items bought in the window (not to offer)."),
    ],
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=DAILY_TTL,
    source=data_sources.item_features,
    description="Demand, conversion, popularity and price of each item.",
    schema=[
        *(Field(name=f"{kind}_{days}d", dtype=Int64, description=f"{kind.capitalize()} in the last {days} day(s).")
          for kind in ("views", "carts", "purchases") for days in (1, 7, 30)),
        Field(name="distinct_users_30d", dtype=Int64, description="Users who interacted in 30 days."),
        Field(name="view_to_cart_rate", dtype=Float64, description="Carts per view, smoothed towards the shop rate."),
        Field(name="view_to_purchase_rate", dtype=Float64, description="Purchases per view, smoothed."),
        Field(name="popularity_rank", dtype=Int64, description="1 = most popular item overall."),
        Field(name="category_popularity_rank", dtype=Int64, description="1 = most popular in its category."),
        Field(name="price_mean", dtype=Float64, description="Mean price seen in the events."),
        Field(name="category_code", dtype=String, description="Leaf category path."),
        Field(name="category_l1", dtype=String, description="Top-level category."),
        Field(name="brand", dtype=String, description="Brand."),
    ],
)  # fmt: skip

item_embedding = FeatureView(
    name="item_embedding",
    entities=[item],
    ttl=timedelta(0),
    source=data_sources.item_embeddings,
    description="Text embedding of the item's metadata (unit length; cosine = dot product).",
    schema=[
        Field(name="embedding", dtype=Array(Float32), description=f"{EMBEDDING_DIM}-dimensional item vector."),
        Field(name="model", dtype=String, description="The encoder that produced it."),
    ],
)

item_neighbors = FeatureView(
    name="item_neighbors",
    entities=[item],
    ttl=DAILY_TTL,
    source=data_sources.item_neighbors,
    description="Item-based CF neighbourhood N(i): co-occurrence neighbours and weights w_ij, by rank.",
    schema=[
        Field(name="neighbor_ids", dtype=Array(Int64), description="Top-K neighbour item ids, strongest first."),
        Field(name="neighbor_weights", dtype=Array(Float64), description="Their cosine-like weights w_ij."),
    ],
)

category_popular = FeatureView(
    name="category_popular",
    entities=[category],
    ttl=DAILY_TTL,
    source=data_sources.category_popular,
    description="Most popular items of a category (or of the whole shop): the recommender's cold start.",
    schema=[Field(name="item_ids", dtype=Array(Int64), description="Item ids, most popular first.")],
)


@on_demand_feature_view(
    sources=[user_profile, item_stats],
    # Feast 0.67 compares declared and inferred fields including descriptions, so this field's description lives
    # in the view's: price_to_user_average = the item's mean price ÷ the user's average purchase price.
    schema=[Field(name="price_to_user_average", dtype=Float64)],
    description="price_to_user_average: the item's mean price ÷ the user's average purchase price (1 = what they "
    "usually pay; null when the user never bought).",
)
def price_for_user(inputs: pd.DataFrame) -> pd.DataFrame:
    average = inputs["monetary"] / inputs["frequency"].where(inputs["frequency"] > 0)
    out = pd.DataFrame()
    out["price_to_user_average"] = (inputs["price_mean"] / average).astype("float64")
    return out
