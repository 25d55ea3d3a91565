"""Seeded synthetic impressions with planted structure and the oracle's probabilities.

The world: users belong to segments and items to categories; each segment and
category has a latent centroid, and every user/item factor is its centroid plus
noise, so side features carry real signal. An impression's

    click logit            = click_bias + item_popularity + s * <u, v>
    purchase | click logit = 0.5 + s * <u, v> - price_sensitivity * z(log price)
    rating | purchase      ~ a discretised Gaussian on 1..5 around 3.4 + s * <u, v> + quality

with s = 1.5 / sqrt(latent_dim). The impressions table carries the truth as
`true_p_click`, `true_p_purchase` (= p_click * p_purchase_given_click) and
`true_rating` (the expected rating), so a model can be compared with the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_mtl.config import SyntheticSource
from recsys_mtl.data.dataset import Dataset

EPOCH_START = 1_767_225_600  # 2026-01-01T00:00:00Z
RATING_LEVELS = np.arange(1, 6, dtype=np.float64)
RATING_SPREAD = 0.9


@dataclass
class SyntheticWorld:
    """The planted truth behind a synthetic dataset (all arrays indexed by raw id)."""

    user_factors: np.ndarray  # (n_users, d)
    item_factors: np.ndarray  # (n_items, d)
    user_segment: np.ndarray  # (n_users,)
    item_category: np.ndarray  # (n_items,)
    item_popularity: np.ndarray  # (n_items,) click-logit offset
    item_quality: np.ndarray  # (n_items,) rating offset
    item_price: np.ndarray  # (n_items,)
    scale: float
    click_bias: float

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scaled inner product s * <u, v>, shape (N,)."""
        return self.scale * np.einsum("nd,nd->n", self.user_factors[users], self.item_factors[items])

    def click_logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.click_bias + self.item_popularity[items] + self.affinity(users, items)

    def purchase_given_click_logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        log_price = np.log(self.item_price)
        z_price = (log_price - log_price.mean()) / log_price.std()
        return 0.5 + self.affinity(users, items) - 0.8 * z_price[items]

    def rating_distribution(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Probabilities of ratings 1..5, shape (N, 5)."""
        centre = 3.4 + self.affinity(users, items) + self.item_quality[items]
        logits = -((RATING_LEVELS[None, :] - centre[:, None]) ** 2) / (2 * RATING_SPREAD**2)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)


def make_world(cfg: SyntheticSource, seed: int) -> SyntheticWorld:
    rng = np.random.default_rng(seed)
    d = cfg.latent_dim
    segment_centroids = rng.normal(0.0, 0.8, (cfg.n_user_segments, d))
    category_centroids = rng.normal(0.0, 0.8, (cfg.n_item_categories, d))
    user_segment = rng.integers(0, cfg.n_user_segments, cfg.n_users)
    item_category = rng.integers(0, cfg.n_item_categories, cfg.n_items)
    return SyntheticWorld(
        user_factors=segment_centroids[user_segment] + rng.normal(0.0, 0.6, (cfg.n_users, d)),
        item_factors=category_centroids[item_category] + rng.normal(0.0, 0.6, (cfg.n_items, d)),
        user_segment=user_segment,
        item_category=item_category,
        item_popularity=rng.normal(0.0, 0.7, cfg.n_items),
        item_quality=rng.normal(0.0, 0.4, cfg.n_items),
        item_price=rng.lognormal(3.0, 0.6, cfg.n_items),
        scale=1.5 / np.sqrt(d),
        click_bias=cfg.click_bias,
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_synthetic(cfg: SyntheticSource, seed: int) -> Dataset:
    """Draw impressions, labels and side tables from the planted world (vectorised)."""
    world = make_world(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    counts = np.maximum(rng.poisson(cfg.impressions_per_user, cfg.n_users), 1)
    users = np.repeat(np.arange(cfg.n_users), counts)
    exposure = np.exp(0.25 * world.item_popularity)
    items = rng.choice(cfg.n_items, size=users.size, p=exposure / exposure.sum())
    timestamps = EPOCH_START + rng.integers(0, cfg.days * 86_400, users.size)

    p_click = _sigmoid(world.click_logit(users, items))
    p_buy_given_click = _sigmoid(world.purchase_given_click_logit(users, items))
    rating_probs = world.rating_distribution(users, items)
    click = rng.random(users.size) < p_click
    purchase = click & (rng.random(users.size) < p_buy_given_click)
    cumulative = rating_probs.cumsum(axis=1)
    drawn = (rng.random(users.size)[:, None] > cumulative).sum(axis=1) + 1
    rating = np.where(purchase, np.minimum(drawn, 5), np.nan)

    impressions = pl.DataFrame(
        {
            "user_id": users.astype(np.int64),
            "item_id": items.astype(np.int64),
            "timestamp": timestamps.astype(np.int64),
            "click": click.astype(np.int8),
            "purchase": purchase.astype(np.int8),
            "rating": rating.astype(np.float32),
            "true_p_click": p_click,
            "true_p_purchase": p_click * p_buy_given_click,
            "true_rating": rating_probs @ RATING_LEVELS,
        }
    ).with_columns(pl.col("rating").fill_nan(None))
    users_table = pl.DataFrame(
        {"user_id": np.arange(cfg.n_users, dtype=np.int64), "segment": world.user_segment}
    ).with_columns(pl.format("segment_{}", "segment").alias("segment"))
    tags = rng.integers(0, 2 * cfg.n_item_categories, (cfg.n_items, 2))
    items_table = pl.DataFrame(
        {
            "item_id": np.arange(cfg.n_items, dtype=np.int64),
            "category": world.item_category,
            "price": world.item_price.astype(np.float32),
            "tag_a": tags[:, 0],
            "tag_b": tags[:, 1],
        }
    ).select(
        "item_id",
        pl.format("category_{}", "category").alias("category"),
        "price",
        pl.concat_list(pl.format("tag_{}", "tag_a"), pl.format("tag_{}", "tag_b")).alias("tags"),
    )
    return Dataset(impressions, users_table, items_table, positive_only=False, name="synthetic")
