"""The two things features describe: a shop's users and its items (ids as in the events)."""

from feast import Entity, ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A shopper (REES46 user_id).")
item = Entity(
    name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="A product (REES46 product_id)."
)
category = Entity(
    name="category", join_keys=["category"], value_type=ValueType.STRING,
    description="A category path at any level (e.g. electronics, electronics.smartphone), or (all) for the shop.",
)  # fmt: skip
