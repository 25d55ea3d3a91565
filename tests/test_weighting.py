"""Contract tests over every registered loss weighting strategy, a hand-computed case per
strategy (what scaling one task's loss does to its weight), checkpoint round trips and
recovery of planted structure; plus the combined early-stopping monitor."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from planted import (
    assert_near_the_oracle,
    contract_params,
    planted_config,
    train_on_one_thread,
)

from recsys_mtl.config import ObjectivesSection, PipelineConfig, TaskConfig, config_from_dict
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import FeatureSet
from recsys_mtl.objectives.weighting import WEIGHTING
from recsys_mtl.objectives.weighting.famo import FamoWeighting
from recsys_mtl.objectives.weighting.gradnorm import GradNormWeighting
from recsys_mtl.objectives.weighting.pcgrad import project_conflicting
from recsys_mtl.pipeline import features_stage, train_stage

STRATEGIES = sorted(WEIGHTING)
TASKS = {
    "click": TaskConfig(kind="binary", label="click", head="dot", weight=1.0),
    "purchase": TaskConfig(kind="binary", label="purchase", depends_on="click", weight=1.0),
    "rating": TaskConfig(kind="regression", label="rating", weight=0.5),
}
TWO_TASKS = {
    "a": TaskConfig(kind="regression", label="a", weight=1.0),
    "b": TaskConfig(kind="regression", label="b", weight=1.0),
}


class Problem:
    """Three losses of a shared representation z = W x (B, 4), on different scales."""

    def __init__(self, seed: int = 0, scale: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        generator = torch.Generator().manual_seed(seed)
        self.encoder = torch.nn.Linear(3, 4)
        torch.nn.init.normal_(self.encoder.weight, generator=generator)
        self.heads = torch.randn(3, 4, generator=generator)
        self.x = torch.randn(16, 3, generator=generator)
        self.y = torch.randn(3, 16, generator=generator)
        self.scale = scale

    def losses(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        z = self.encoder(self.x)
        losses = {
            name: self.scale[t] * ((z @ self.heads[t] - self.y[t]) ** 2).mean()
            for t, name in enumerate(TASKS)
        }
        return losses, z


def _step(strategy, problem: Problem) -> tuple[torch.Tensor, dict[str, float]]:
    losses, z = problem.losses()
    total, weights = strategy(losses, (z,))
    total.backward()
    strategy.after_step(lambda: problem.losses()[0])
    return total, weights


# ---------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", STRATEGIES)
def test_weights_are_finite_positive_and_normalised_as_documented(name: str) -> None:
    strategy = WEIGHTING[name](TASKS, ObjectivesSection())
    problem = Problem(scale=(1.0, 30.0, 0.01))
    for epoch in range(3):
        for _ in range(4):
            total, weights = _step(strategy, problem)
            assert torch.isfinite(total)
            assert set(weights) == set(TASKS)
            values = np.array(list(weights.values()))
            assert np.all(np.isfinite(values)) and np.all(values > 0), weights
            expected = {
                "task": lambda v: np.allclose(v, [t.weight for t in TASKS.values()]),
                "sum_to_tasks": lambda v: math.isclose(v.sum(), len(TASKS), rel_tol=1e-5),
                "sum_to_one": lambda v: math.isclose(v.sum(), 1.0, rel_tol=1e-5),
                "none": lambda v: True,
            }[strategy.normalisation]
            assert expected(values), (strategy.normalisation, weights)
        assert all(torch.isfinite(p.grad).all() for p in problem.encoder.parameters())
        strategy.on_epoch_end({"click": 1.0 / (epoch + 1), "purchase": 0.9, "rating": 0.5})


@pytest.mark.parametrize("name", STRATEGIES)
def test_state_survives_a_checkpoint_round_trip(name: str) -> None:
    options = ObjectivesSection()
    strategy = WEIGHTING[name](TASKS, options)
    problem = Problem(seed=1, scale=(1.0, 5.0, 0.2))
    for epoch in range(3):
        for _ in range(3):
            _step(strategy, problem)
        strategy.on_epoch_end({"click": 1.0 / (epoch + 1), "purchase": 0.8, "rating": 0.6})
    buffer = io.BytesIO()
    torch.save(strategy.state_dict(), buffer)
    buffer.seek(0)
    restored = WEIGHTING[name](TASKS, options)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    # the same next two steps from either
    for _ in range(2):
        problem.encoder.zero_grad()
        total_a, weights_a = _step(strategy, problem)
        problem.encoder.zero_grad()
        total_b, weights_b = _step(restored, problem)
        assert float(total_a.detach()) == pytest.approx(float(total_b.detach()), rel=1e-6)
        assert weights_a == pytest.approx(weights_b, rel=1e-6)


# ---------------------------------------------------------------------------- hand-computed


def test_static_weights_ignore_the_loss_scale() -> None:
    strategy = WEIGHTING["static"](TASKS)
    _, small = strategy(Problem().losses()[0])
    _, scaled = strategy(Problem(scale=(1000.0, 1.0, 1.0)).losses()[0])
    assert small == scaled == {"click": 1.0, "purchase": 1.0, "rating": 0.5}


def test_inverse_loss_weights_by_hand() -> None:
    strategy = WEIGHTING["inverse_loss"](TASKS, ObjectivesSection(inverse_loss_alpha=1.0))
    losses = {
        "click": torch.tensor(1.0),
        "purchase": torch.tensor(2.0),
        "rating": torch.tensor(4.0),
    }
    total, weights = strategy(losses)
    # 1/L = (1, .5, .25), sum 1.75, times 3 tasks
    assert list(weights.values()) == pytest.approx([3 / 1.75, 1.5 / 1.75, 0.75 / 1.75])
    assert float(total) == pytest.approx(3 * 3 / 1.75)  # every weighted loss is 3 / 1.75
    losses["click"] = torch.tensor(100.0)  # one loss 100 times larger: 100 times less weight
    _, scaled = strategy(losses)
    raw = np.array([0.01, 0.5, 0.25])
    assert list(scaled.values()) == pytest.approx(list(3 * raw / raw.sum()))


def test_uncertainty_weights_settle_at_half_the_inverse_loss() -> None:
    strategy = WEIGHTING["uncertainty"](TWO_TASKS)
    optimizer = torch.optim.SGD(strategy.parameters(), lr=0.2)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(100.0)}
    for _ in range(3000):
        optimizer.zero_grad()
        total, weights = strategy(losses)
        total.backward()
        optimizer.step()
    # regression form 0.5 exp(-s) L + 0.5 s is minimised at 0.5 exp(-s) = 0.5 / L
    assert weights["a"] == pytest.approx(0.5, rel=1e-3)
    assert weights["b"] == pytest.approx(0.005, rel=1e-3)
    # the classification form exp(-s) L + 0.5 s settles at the same weight 0.5 / L
    binary = WEIGHTING["uncertainty"]({"c": TaskConfig(kind="binary", label="c")})
    optimizer = torch.optim.SGD(binary.parameters(), lr=0.1)
    for _ in range(3000):
        optimizer.zero_grad()
        total, weights = binary({"c": torch.tensor(2.0)})
        total.backward()
        optimizer.step()
    assert weights["c"] == pytest.approx(0.25, rel=1e-3)


def test_gradnorm_lowers_the_weight_of_the_task_with_the_large_gradient() -> None:
    strategy = GradNormWeighting(TWO_TASKS, ObjectivesSection(gradnorm_lr=0.025))
    strategy.initial_losses = torch.tensor([1.0, 1.0])
    # equal training rates, gradient norms 1 and 100: targets are both mean(G) = 50.5, so
    # the first Adam step moves w_a up and w_b down by the learning rate; the sum stays 2
    strategy.update(torch.tensor([1.0, 100.0]), torch.tensor([1.0, 1.0]))
    assert strategy.weights.detach().tolist() == pytest.approx([1.025, 0.975], abs=1e-6)
    # through the strategy: the loss scaled by 100 has a 100 times larger gradient on z
    # (its first loss is 100 times larger too, so the training rates stay equal)
    strategy = GradNormWeighting(TWO_TASKS, ObjectivesSection(gradnorm_lr=0.025))
    z = torch.randn(8, 3, requires_grad=True)
    for _ in range(20):
        losses = {"a": (z**2).mean(), "b": 100 * (z**2).mean()}
        strategy(losses, (z,))
    assert strategy.weights[1] < 0.6 < 1.4 < strategy.weights[0]


def test_dwa_weights_by_hand_and_scale_invariance() -> None:
    strategy = WEIGHTING["dwa"](TWO_TASKS, ObjectivesSection(dwa_temperature=2.0))
    assert strategy({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})[1] == {"a": 1, "b": 1}
    strategy.on_epoch_end({"a": 1.0, "b": 1.0})
    strategy.on_epoch_end({"a": 0.5, "b": 0.9})  # ratios 0.5 and 0.9
    e_a, e_b = math.exp(0.5 / 2), math.exp(0.9 / 2)
    expected = [2 * e_a / (e_a + e_b), 2 * e_b / (e_a + e_b)]  # (0.9003, 1.0997)
    _, weights = strategy({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    assert list(weights.values()) == pytest.approx(expected, abs=1e-6)
    assert weights["b"] > weights["a"]  # the slower task gets more weight
    scaled = WEIGHTING["dwa"](TWO_TASKS, ObjectivesSection(dwa_temperature=2.0))
    scaled.on_epoch_end({"a": 100.0, "b": 1.0})
    scaled.on_epoch_end({"a": 50.0, "b": 0.9})
    assert list(scaled({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})[1].values()) == (
        pytest.approx(expected, abs=1e-6)
    )


def test_pcgrad_projection_by_hand() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: dot = -1
    projected = project_conflicting(grads, [[1], [0]])
    # g1 - (g1.g2 / |g2|^2) g2 = (0.5, 0.5); g2 - (g2.g1 / |g1|^2) g1 = (0, 1)
    assert projected.tolist() == [[0.5, 0.5], [0.0, 1.0]]
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(project_conflicting(agreeing, [[1], [0]]), agreeing)
    # through the strategy: z receives the sum of the projected gradients, and scaling the
    # second loss by 100 leaves the first task's projected gradient (0.5, 0.5) unchanged
    for scale, expected in ((1.0, [0.5, 1.5]), (100.0, [0.5, 100.5])):
        strategy = WEIGHTING["pcgrad"](TWO_TASKS)
        z = torch.zeros(2, requires_grad=True)
        losses = {"a": z @ torch.tensor([1.0, 0.0]), "b": scale * (z @ torch.tensor([-1.0, 1.0]))}
        total, _ = strategy(losses, (z,))
        total.backward()
        assert z.grad.tolist() == pytest.approx(expected)


def test_famo_weights_by_hand() -> None:
    strategy = FamoWeighting(TWO_TASKS, ObjectivesSection(famo_lr=0.025, famo_decay=0.0))
    # z = (0.5, 0.5), c = 0.5 / 1 + 0.5 / 4 = 0.625, w_t = z_t / (c L_t) = (0.8, 0.2)
    _, weights = strategy({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})
    assert list(weights.values()) == pytest.approx([0.8, 0.2], abs=1e-6)
    # scale b by 100: its weight falls 100-fold-ish, the weighted losses stay equal
    _, scaled = strategy({"a": torch.tensor(1.0), "b": torch.tensor(400.0)})
    assert scaled["a"] * 1.0 == pytest.approx(scaled["b"] * 400.0, rel=1e-5)
    # the update direction sum_t z_t grad log L_t is scale invariant (its length, set by
    # c, is not): the same direction with b's loss 1000 times larger
    theta = torch.tensor([2.0, -1.0], requires_grad=True)
    directions = []
    for factor in (1.0, 1000.0):
        losses = {"a": (theta**2).sum(), "b": factor * ((theta - 1) ** 2).sum()}
        total, _ = strategy(losses)
        (grad,) = torch.autograd.grad(total, theta)
        directions.append(grad / grad.norm())
    assert directions[0].tolist() == pytest.approx(directions[1].tolist(), abs=1e-6)
    # a task whose loss fell (a: 1 -> 0.5) loses weight to the one that did not (b)
    strategy.update(torch.tensor([1.0, 4.0]), torch.tensor([0.5, 4.0]))
    assert strategy.logits.detach().tolist() == pytest.approx([-0.025, 0.025], abs=1e-6)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, FeatureSet]:
    config = planted_config(
        tmp_path_factory.mktemp("weighting"), {}, {"epochs": 8, "log_every": 10}
    )
    return config, features_stage(config)


@pytest.mark.slow
@pytest.mark.parametrize("name", contract_params(STRATEGIES, keep=("pcgrad",)))
def test_every_strategy_recovers_planted_structure(planted, name: str) -> None:
    config, features = planted
    config = dataclasses.replace(
        config, objectives=dataclasses.replace(config.objectives, weighting=name)
    )
    result, metrics = train_on_one_thread(config, features)
    assert_near_the_oracle(metrics, features)
    # diagnostics: per-epoch weights, smoothed per-step losses and weights, the plot
    assert all(f"weight/{t}" in h for h in result.history for t in TASKS)
    assert result.steps and all(f"step/weight/{t}" in s for s in result.steps for t in TASKS)
    assert (config.output_path / "training" / "weighting.png").stat().st_size > 0


def test_combined_monitor_selects_on_signed_relative_gains(planted) -> None:
    config, features = planted
    training = dataclasses.replace(
        config.training,
        epochs=3,
        patience=5,
        monitor="val/combined",
        monitor_weights={"val/click_auc": 1.0, "val/rating_rmse": 1.0},
    )
    config = dataclasses.replace(config, training=training)
    _, result = train_stage(config, features)
    first = result.history[0]
    for row in result.history:
        gain_auc = (row["val/click_auc"] - first["val/click_auc"]) / first["val/click_auc"]
        gain_rmse = -(row["val/rating_rmse"] - first["val/rating_rmse"]) / first["val/rating_rmse"]
        assert row["val/combined"] == pytest.approx((gain_auc + gain_rmse) / 2, abs=1e-9)
    assert result.best_score == max(row["val/combined"] for row in result.history)
    with pytest.raises(RecsysError, match="monitor_weights"):
        config_from_dict({"training": {"monitor": "val/combined"}})
    with pytest.raises(RecsysError, match="monitor_weights"):
        config_from_dict({"training": {"monitor_weights": {"click_auc": 1.0}}})
