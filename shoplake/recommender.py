"""The reference recommender: reads only online features through the Feast SDK, so it answers in milliseconds
and proves that what the feature store serves is enough to recommend.

For a user with history (``user_history``: their strongest items j with scores r(u, j), and what they bought):
1. candidates i: the CF neighbours of the user's items (``item_neighbors``), at most ``recommend_candidates``;
2. CF score, exactly the gold formula: score(u, i) = Σ_{j ∈ N(i)} w_ij · r(u, j), from each candidate's own
   neighbourhood N(i) and weights;
3. embedding score: cosine between the candidate's embedding and the user's profile vector (the r-weighted mean
   of their items' embeddings);
4. blended: (1 − β) · CF / max CF + β · cosine, β = ``recommend_embedding_weight``; bought items never offered.
The most popular items of the user's top categories, then of the whole shop (``category_popular``), make up the
list when CF finds fewer than k, and are the whole list for a user without history (new, or unknown to the store):
the offline evaluation fills each user's list the same way, so its Recall/NDCG describe lists of this length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from shoplake.errors import ShoplakeError
from shoplake.feature_store import online_features
from shoplake.settings import Settings, get_settings

if TYPE_CHECKING:
    from feast import FeatureStore

from spark_jobs.item_features import ALL_CATEGORIES  # the category_popular row of the whole shop


@dataclass(frozen=True)
class Scored:
    """One recommended item; ``source`` says why: ``cf`` (scored by the blend) or ``popular`` (a popular item of
    the user's categories or the shop, scored 1 / (1 + category rank + position / 1000) alone, or 0 after CF items)."""

    item_id: int
    score: float
    cf: float | None = None
    cosine: float | None = None
    source: str = "cf"


@dataclass(frozen=True)
class Recommendation:
    user_id: int
    strategy: str  # "cf+embedding" | "cold_start"
    items: list[Scored] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "strategy": self.strategy, "items": [asdict(s) for s in self.items]}


def _unit(vector: list[float] | None) -> list[float] | None:
    if not vector:
        return None
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else None


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _by_item(store: FeatureStore, features: list[str], item_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = list(dict.fromkeys(item_ids))
    if not ids:
        return {}
    values = online_features(store, features, [{"item_id": i} for i in ids])
    names = [f.split(":")[1] for f in features]
    return {i: {n: values[n][k] for n in names} for k, i in enumerate(ids)}


def recommend(store: FeatureStore, user_id: int, k: int, settings: Settings | None = None) -> Recommendation:
    if k < 1:
        raise ShoplakeError(f"recommend: k must be at least 1, got {k}")
    settings = settings or get_settings()
    user = online_features(
        store,
        ["user_history:item_ids", "user_history:item_scores", "user_history:bought_item_ids",
         "user_category_affinity:top_categories"],
        [{"user_id": user_id}],
    )  # fmt: skip
    items, scores = user["item_ids"][0] or [], user["item_scores"][0] or []
    bought = set(user["bought_item_ids"][0] or [])
    if not items:
        return cold_start(store, user_id, k, user["top_categories"][0] or [], bought)
    rating = dict(zip(items, scores, strict=True))

    # 1. candidates from the neighbourhoods of the user's items, ranked by a first-pass score
    around_mine = _by_item(store, ["item_neighbors:neighbor_ids", "item_neighbors:neighbor_weights"], items)
    first_pass: dict[int, float] = {}
    for j, row in around_mine.items():
        for i, w in zip(row["neighbor_ids"] or [], row["neighbor_weights"] or [], strict=True):
            if i not in bought:
                first_pass[i] = first_pass.get(i, 0.0) + w * rating[j]
    candidates = sorted(first_pass, key=lambda i: (-first_pass[i], i))[: settings.recommend_candidates]
    if not candidates:
        return cold_start(store, user_id, k, user["top_categories"][0] or [], bought)

    # 2. exact CF score from each candidate's own neighbourhood N(i); 3. cosine to the user's profile
    features = ["item_neighbors:neighbor_ids", "item_neighbors:neighbor_weights", "item_embedding:embedding"]
    theirs = _by_item(store, features, candidates)
    mine = _by_item(store, ["item_embedding:embedding"], items)
    profile = _profile(mine, rating)
    cf: dict[int, float] = {}
    cosine: dict[int, float | None] = {}
    for i in candidates:
        row = theirs[i]
        cf[i] = sum(w * rating[j] for j, w in zip(row["neighbor_ids"] or [], row["neighbor_weights"] or [],
                                                    strict=True) if j in rating)  # fmt: skip
        vector = _unit(row["embedding"])
        cosine[i] = _dot(vector, profile) if vector and profile else None
    top_cf = max(cf.values()) or 1.0
    beta = settings.recommend_embedding_weight
    scored = []
    for i in candidates:
        similarity = cosine[i]
        blended = (1 - beta) * cf[i] / top_cf + beta * (similarity or 0.0)
        scored.append(
            Scored(i, round(blended, 6), round(cf[i], 6), None if similarity is None else round(similarity, 6))
        )
    scored.sort(key=lambda s: (-s.score, s.item_id))
    picked = scored[:k]
    if len(picked) < k:
        taken = bought | {s.item_id for s in picked}
        fill = popular_items(store, user["top_categories"][0] or [], taken, k - len(picked))
        picked += [Scored(s.item_id, 0.0, source="popular") for s in fill]
    return Recommendation(user_id, "cf+embedding", picked)


def _profile(embeddings: dict[int, dict[str, Any]], rating: dict[int, float]) -> list[float] | None:
    total: list[float] | None = None
    for j, row in embeddings.items():
        vector = _unit(row["embedding"])
        if vector is None:
            continue
        weighted = [x * rating[j] for x in vector]
        total = weighted if total is None else [a + b for a, b in zip(total, weighted, strict=True)]
    return _unit(total)


def cold_start(store: FeatureStore, user_id: int, k: int, categories: list[str], bought: set[int]) -> Recommendation:
    return Recommendation(user_id, "cold_start", popular_items(store, categories, bought, k))


def popular_items(store: FeatureStore, categories: list[str], taken: set[int], k: int) -> list[Scored]:
    """The k most popular items of the user's top categories in turn, then of the whole shop, none of ``taken``."""
    keys = [*categories, ALL_CATEGORIES]
    popular = online_features(store, ["category_popular:item_ids"], [{"category": c} for c in keys])["item_ids"]
    picked: list[Scored] = []
    seen = set(taken)
    for rank_group, ids in enumerate(popular):
        for position, item in enumerate(ids or []):
            if len(picked) == k:
                return picked
            if item not in seen:
                seen.add(item)
                picked.append(Scored(item, round(1.0 / (1 + rank_group + position / 1000), 6), source="popular"))
    return picked
