"""Commerce: the product catalogue, carts and orders, unique coupons, loyalty points and tiers,
and product recommendations."""
