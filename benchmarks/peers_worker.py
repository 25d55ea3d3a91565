"""One timed training epoch of one framework's multi-task model, in its own process.

Run by benchmarks/peers_throughput.py (never by hand): `ours` in the project's venv,
`torch_rechub` and `deepctr_torch` in benchmarks/.venv-peers, which does not have
recsys_mtl. Every framework trains on the same rows (train.parquet; `ours` reads the
same rows from the saved feature set they were cut from), one epoch from the same seed,
then scores test.parquet; the result is one JSON line on stdout:
samples_per_second (wall time of the epoch alone: the framework's own data feeding,
forward, backward and optimiser step), epoch_seconds, click_auc and purchase_auc.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

TASK_LABELS = ("click", "purchase", "rating")
SPLITS = ("train", "validation", "test")
# PLE: one task and one shared expert (DeepCTR-Torch 0.3.0 builds `specific_expert_num`
# shared experts whatever `shared_expert_num` says, so only equal numbers run there)
EXPERT, TOWER, EXPERTS, SHARED_EXPERTS, TASK_EXPERTS = 64, 32, 4, 1, 1


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by ranks (ties share their mean rank)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _targets(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(TASK_LABELS)].to_numpy(np.float32)


def _sparse(frame: pd.DataFrame, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: frame[name].to_numpy(np.int64) for name in meta["sparse"]}


def run_torch_rechub(
    model_name: str, batch: int, lr: float, frames: dict[str, pd.DataFrame], meta: dict, tmp: Path
) -> tuple[float, dict[str, np.ndarray]]:
    from torch_rechub.basic.features import SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    features = [SparseFeature(n, size, embed_dim=meta["dim"]) for n, size in meta["sparse"].items()]
    task_types = ["classification", "classification", "regression"]
    towers = [{"dims": [TOWER]} for _ in task_types]
    if model_name == "mmoe":
        model = MMOE(features, task_types, EXPERTS, {"dims": [EXPERT]}, towers)
    else:
        experts = {"dims": [EXPERT]}
        model = PLE(features, task_types, 1, TASK_EXPERTS, SHARED_EXPERTS, experts, towers)
    trainer = MTLTrainer(
        model,
        task_types,
        optimizer_params={"lr": lr, "weight_decay": 0.0},
        n_epoch=1,
        device="cpu",
        model_path=str(tmp),
    )
    train = frames["train"]
    generator = DataGenerator(_sparse(train, meta), _targets(train))
    loader, validation_loader, test_loader = generator.generate_dataloader(
        x_val=_sparse(frames["validation"], meta),
        y_val=_targets(frames["validation"]),
        x_test=_sparse(frames["test"], meta),
        y_test=_targets(frames["test"]),
        batch_size=batch,
    )
    start = time.perf_counter()
    trainer.train_one_epoch(loader)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        scored = {
            name: torch.cat([model(x) for x, _ in data]).numpy()
            for name, data in (("validation", validation_loader), ("test", test_loader))
        }
    return seconds, scored


def _no_version_check() -> None:
    """DeepCTR-Torch asks the package index for a newer release in a thread it starts at
    import (and imports `requests`, which it does not declare): answer that request here,
    so the benchmark makes no network request."""
    import requests

    def offline_get(*_args: Any, **_kwargs: Any) -> Any:
        return types.SimpleNamespace(status_code=204, text="{}")

    requests.get = offline_get


def run_deepctr_torch(
    model_name: str, batch: int, lr: float, frames: dict[str, pd.DataFrame], meta: dict, tmp: Path
) -> tuple[float, dict[str, np.ndarray]]:
    _no_version_check()
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import MMOE, PLE

    columns = [SparseFeat(n, size, embedding_dim=meta["dim"]) for n, size in meta["sparse"].items()]
    shape = {
        "task_types": ("binary", "binary", "regression"),
        "task_names": TASK_LABELS,
        "expert_dnn_hidden_units": (EXPERT,),
        "gate_dnn_hidden_units": (),
        "tower_dnn_hidden_units": (TOWER,),
        "l2_reg_embedding": 0.0,
        "l2_reg_linear": 0.0,
        "seed": 0,
        "device": "cpu",
    }
    if model_name == "mmoe":
        model = MMOE(columns, num_experts=EXPERTS, **shape)
    else:
        model = PLE(
            columns,
            shared_expert_num=SHARED_EXPERTS,
            specific_expert_num=TASK_EXPERTS,
            num_levels=1,
            **shape,
        )
    model.compile(
        torch.optim.Adam(model.parameters(), lr=lr),
        loss=["binary_crossentropy", "binary_crossentropy", "mse"],
    )
    x, y = _sparse(frames["train"], meta), _targets(frames["train"])
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True)
    seconds = time.perf_counter() - start
    return seconds, {
        name: np.asarray(model.predict(_sparse(frames[name], meta), batch_size=65536))
        for name in ("validation", "test")
    }


def ours_trainer(
    meta: dict, model_name: str, batch: int, lr: float | None = None, precision: str = "float32"
) -> tuple[Any, Any, Any, Any]:
    """Our Trainer (seeded, prepared) for the benchmark's shapes, with its config, the
    saved feature set and the training rows as tensors."""
    from recsys_mtl.config import load_config
    from recsys_mtl.features.pipeline import load_features
    from recsys_mtl.model.multitask import build_model
    from recsys_mtl.objectives.weighting import WEIGHTING
    from recsys_mtl.training.tensors import TensorData
    from recsys_mtl.training.trainer import Trainer

    overrides = [*meta["overrides"], *meta["ours"][model_name], f"training.batch_size={batch}"]
    overrides.append(f"training.precision='{precision}'")
    if lr is not None:
        overrides.append(f"training.learning_rate={lr}")
    config = load_config(meta["pipeline"], overrides)
    features = load_features(Path(meta["features"]))
    torch.manual_seed(0)
    rows = TensorData.from_frame(features.train, config.tasks, features.transform)
    model = build_model(features.transform, config.model, config.tasks, rows.label_means())
    weighting = WEIGHTING[config.objectives.weighting](config.tasks, config.objectives)
    trainer = Trainer(model, config.tasks, weighting, config.training, seed=0)
    trainer._prepare()
    return trainer, config, features, rows


def run_ours(
    model_name: str,
    batch: int,
    lr: float,
    frames: dict[str, pd.DataFrame],
    meta: dict,
    tmp: Path,
    precision: str = "float32",
) -> tuple[float, dict[str, np.ndarray]]:
    from recsys_mtl.training.tensors import TensorData, predict_arrays

    trainer, config, features, rows = ours_trainer(meta, model_name, batch, lr, precision)
    start = time.perf_counter()
    trainer.train_epoch(rows, 1)
    seconds = time.perf_counter() - start
    scored = {}
    for name in ("validation", "test"):
        rows = TensorData.from_frame(features.splits[name], config.tasks, features.transform)
        predictions = predict_arrays(trainer.model, rows)
        scored[name] = np.stack([predictions["p_click"], predictions["p_purchase"]], axis=1)
    return seconds, scored


def run_ours_bfloat16(*args: Any) -> tuple[float, dict[str, np.ndarray]]:
    return run_ours(*args, precision="bfloat16")


RUNNERS = {
    "torch_rechub": run_torch_rechub,
    "deepctr_torch": run_deepctr_torch,
    "ours": run_ours,
    "ours_bfloat16": run_ours_bfloat16,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=sorted(RUNNERS), required=True)
    parser.add_argument("--model", choices=["mmoe", "ple"], required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--lr", type=float, required=True, help="Adam's learning rate")
    args = parser.parse_args()
    meta = json.loads((args.data / "meta.json").read_text())
    frames = {s: pd.read_parquet(args.data / f"{s}.parquet") for s in SPLITS}
    torch.manual_seed(0)
    np.random.seed(0)
    seconds, scored = RUNNERS[args.framework](
        args.model, args.batch, args.lr, frames, meta, args.data
    )
    result = {
        "framework": args.framework,
        "model": args.model,
        "batch_size": args.batch,
        "learning_rate": args.lr,
        "train_rows": len(frames["train"]),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "epoch_seconds": seconds,
        "samples_per_second": len(frames["train"]) / seconds,
    }
    for split in ("validation", "test"):
        for column, label in enumerate(("click", "purchase")):
            labels = frames[split][label].to_numpy()
            result[f"{split}_{label}_auc"] = auc(labels, scored[split][:, column])
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
