"""One feature service per consumer and version."""

from feast import FeatureService

from feature_repo.feature_views import (
    item_embedding,
    item_neighbors,
    item_stats,
    price_for_user,
    user_activity,
    user_category_affinity,
    user_history,
    user_profile,
)

recommender_v1 = FeatureService(
    name="recommender_v1",
    features=[
        user_profile[["segment", "price_band"]],
        user_history,
        user_category_affinity,
        item_stats,
        item_embedding[["embedding"]],
        item_neighbors,
        price_for_user,
    ],  # fmt: skip
    description="Online candidate generation and scoring for the reference recommender.",
)

marketing_analytics_v1 = FeatureService(
    name="marketing_analytics_v1",
    features=[user_profile, user_activity, user_category_affinity],
    description="Segments, RFM and category affinity for marketing analytics and audience exports.",
)
