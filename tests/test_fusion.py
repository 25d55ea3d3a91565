"""Fusion rules on hand-computed scores, and the errors for bad weights."""

from __future__ import annotations

import math

import pytest
import torch

from recsys_mtl.errors import RecsysError
from recsys_mtl.retrieval.fusion import check_fusion, fuse, fused_score

KINDS = {"click": "binary", "purchase": "binary", "rating": "regression"}


def _scores() -> dict[str, torch.Tensor]:
    # two candidates: A = (0.5, 0.2, 4/5), B = (0.8, 0.1, 2/5)
    return {
        "click": torch.tensor([0.5, 0.8]),
        "purchase": torch.tensor([0.2, 0.1]),
        "rating": torch.tensor([0.8, 0.4]),
    }


def test_product_fusion_is_the_weighted_geometric_product() -> None:
    weights = {"click": 1.0, "purchase": 2.0, "rating": 0.5}
    key = fuse(_scores(), weights, "product")
    score = fused_score(key, "product")
    expected_a = 0.5 * 0.2**2 * 0.8**0.5  # 0.017889
    expected_b = 0.8 * 0.1**2 * 0.4**0.5  # 0.005060
    assert score.tolist() == pytest.approx([expected_a, expected_b], rel=1e-5)
    assert key.tolist() == pytest.approx([math.log(expected_a), math.log(expected_b)], rel=1e-5)


def test_sum_fusion_is_the_weighted_sum_and_can_reverse_the_order() -> None:
    weights = {"click": 1.0, "purchase": 0.0, "rating": 0.25}
    score = fused_score(fuse(_scores(), weights, "sum"), "sum")
    assert score.tolist() == pytest.approx([0.5 + 0.2, 0.8 + 0.1], rel=1e-6)  # B first
    product = fuse(_scores(), {"click": 0.0, "purchase": 1.0}, "product")
    assert product[0] > product[1]  # A first on purchase alone


def test_zero_weight_drops_a_head_even_when_its_score_is_zero() -> None:
    scores = {"click": torch.tensor([0.3]), "purchase": torch.tensor([0.0])}
    key = fuse(scores, {"click": 1.0, "purchase": 0.0}, "product")
    assert fused_score(key, "product").item() == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("weights", "mode", "message"),
    [
        ({"clicks": 1.0}, "product", "unknown tasks"),
        ({"click": -1.0}, "product", ">= 0"),
        ({"click": float("nan")}, "product", ">= 0"),
        ({"click": "high"}, "product", "must be a number"),
        ({"click": 0.0, "purchase": 0.0}, "product", "every fusion weight is 0"),
        ({"click": 1.0}, "max", "fusion mode"),
    ],
)
def test_bad_fusion_is_a_clear_error(weights, mode, message) -> None:
    with pytest.raises(RecsysError, match=message):
        check_fusion(weights, mode, KINDS, where="request")
