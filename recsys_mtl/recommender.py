"""The trained recommender as one bundle: model + feature transform + seen items + index.

Bundle folder (written under a temporary name, then renamed into place):
  manifest.json   format version, library versions, sha256 of every file
  model.pt        the model's state_dict (loaded with weights_only=True)
  model.json      architecture, tasks, retrieval settings
  transform/      vocabularies and side tables (see features.transform)
  seen.npz        items each known user interacted with (CSR over user indices)
  index.faiss     the FAISS index of item vectors (+ index.json), once built
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys_mtl.config import ModelSection, RetrievalSection
from recsys_mtl.data.schema import to_polars
from recsys_mtl.errors import RecsysError
from recsys_mtl.features.pipeline import replace_folder
from recsys_mtl.features.transform import FeatureTransform
from recsys_mtl.features.vocab import FIRST, UNKNOWN
from recsys_mtl.model.embeddings import RowInputs, SideInputs
from recsys_mtl.model.multitask import MultiTaskModel, model_from_metadata, model_metadata
from recsys_mtl.retrieval.index import ItemIndex
from recsys_mtl.training.tensors import row_inputs

FORMAT_VERSION = 1
CHUNK_USERS = 1024


def csr_rows(
    indptr: np.ndarray, items: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gather CSR rows (vectorised): returns the sub-matrix's (indptr, items)."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    sub_indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    offsets = np.arange(sub_indptr[-1]) - np.repeat(sub_indptr[:-1], lengths)
    return sub_indptr, items[np.repeat(starts, lengths) + offsets]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Recommender:
    """Scores impressions (`predict`) and answers retrieval queries (`recommend`)."""

    def __init__(
        self,
        model: MultiTaskModel,
        transform: FeatureTransform,
        seen_indptr: np.ndarray,
        seen_items: np.ndarray,
        retrieval: RetrievalSection,
        model_cfg: ModelSection,
        index: ItemIndex | None = None,
    ) -> None:
        self.model = model.eval()
        self.model_cfg = model_cfg
        self.transform = transform
        self.seen_indptr = seen_indptr
        self.seen_items = seen_items
        self.retrieval = retrieval
        self.index = index
        self._item_rows: RowInputs | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_training(
        cls,
        model: MultiTaskModel,
        transform: FeatureTransform,
        interactions: pl.DataFrame,
        retrieval: RetrievalSection,
        model_cfg: ModelSection,
    ) -> Recommender:
        """`interactions`: the rows whose positives count as seen (train + validation)."""
        positives = (
            interactions.filter((pl.col("click") == 1) & (pl.col("item_idx") >= FIRST))
            .select("user_idx", "item_idx")
            .unique()
            .sort("user_idx", "item_idx")
        )
        counts = np.bincount(positives["user_idx"].to_numpy(), minlength=transform.users.ids.size)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(
            model,
            transform,
            indptr,
            positives["item_idx"].to_numpy().astype(np.int64),
            retrieval,
            model_cfg,
        )

    @property
    def n_items(self) -> int:
        return self.transform.items.ids.size

    def item_rows(self) -> RowInputs:
        """Row features (history, recency) of every item index 0..n_items-1 from the
        serving state at its reference time; cached."""
        if self._item_rows is None:
            known = self.transform.items.ids.values
            ids = pl.concat([pl.Series([None] * FIRST, dtype=known.dtype), known])
            frame = self.transform.serving_rows(pl.DataFrame({"item_id": ids}), "item")
            self._item_rows = row_inputs(frame, self.transform.items.spec.rows, len(ids))
        return self._item_rows

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        """(n_known_items, D + 1) float32; row r is the item with vocabulary index r + 2."""
        idx = torch.arange(FIRST, self.n_items)
        items = self.model.item_encoder(idx, self.item_rows().take(idx))
        return self.model.item_vectors(items).numpy().astype(np.float32)

    @torch.no_grad()
    def user_vectors(self, users: pl.Series | pl.DataFrame, where: str = "request") -> np.ndarray:
        """(U, D + 1) float32 retrieval vectors of raw user ids (unknown ids served from
        their side features and state, or as the unknown user). `users` is a Series of
        ids or a frame with `user_id` and optionally the request `timestamp` and context."""
        frame = users if isinstance(users, pl.DataFrame) else pl.DataFrame({"user_id": users})
        inputs = self._side_inputs("user", frame, where)
        encoded = self.model.user_encoder.encode(inputs)
        return self.model.user_vectors(encoded).numpy().astype(np.float32)

    def build_index(self, factory: str | None = None) -> ItemIndex:
        self.index = ItemIndex.build(self.item_vectors(), factory or self.retrieval.index)
        return self.index

    # ------------------------------------------------------------------ inputs

    def _side_inputs(self, side_name: str, frame: pl.DataFrame, where: str) -> SideInputs:
        """Inputs for the raw ids in `frame[<side>_id]`. Table features: known ids from the
        model's buffers; ids unknown to the vocabulary but present in the side table get
        their own. Row features from the serving state, at `frame`'s timestamp when it
        has one (else the state's reference time), with its context columns."""
        side = self.transform.side(side_name)
        encoder = self.model.user_encoder if side_name == "user" else self.model.item_encoder
        raw_ids = side.ids.cast(frame[side.spec.key], where)
        frame = frame.with_columns(raw_ids)
        idx = side.ids.encode(raw_ids, where).to_numpy().astype(np.int64)
        rows = row_inputs(self.transform.serving_rows(frame, side_name), side.spec.rows, len(idx))
        inputs = encoder.lookup(torch.from_numpy(idx), rows)
        cold = idx == UNKNOWN
        if side.table is not None and cold.any():
            cold_ids = pl.DataFrame({side.spec.key: raw_ids.filter(pl.Series(cold))})
            cold_ids = cold_ids.join(
                side.table, on=side.spec.key, how="left", maintain_order="left"
            )
            arrays = side.encode_table(cold_ids)
            where_cold = torch.from_numpy(np.flatnonzero(cold))
            n_cat, n_num = arrays.categorical.shape[1], arrays.numeric.shape[1]
            inputs.categorical[where_cold, :n_cat] = torch.from_numpy(arrays.categorical)
            inputs.numeric[where_cold, :n_num] = torch.from_numpy(arrays.numeric)
            for name, values in arrays.lists.items():
                inputs.lists[name][where_cold] = torch.from_numpy(values)
        return inputs

    # ------------------------------------------------------------------ predict

    @torch.no_grad()
    def predict(self, frame: Any, where: str = "input") -> pl.DataFrame:
        """One row per input row (same order): p_<task> and <task>_pred columns."""
        frame = to_polars(frame, where)
        for column in ("user_id", "item_id"):
            if column not in frame.columns:
                raise RecsysError(
                    f"column '{column}' is missing",
                    where=where,
                    fix="give user_id and item_id for every row",
                )
        parts: list[dict[str, torch.Tensor]] = []
        for start in range(0, frame.height, 65536):
            chunk = frame.slice(start, 65536)
            users = self._side_inputs("user", chunk, where)
            items = self._side_inputs("item", chunk, where)
            parts.append(self.model.predictions(self.model.forward_inputs(users, items)))
        names = list(parts[0]) if parts else []
        return pl.DataFrame({n: torch.cat([p[n] for p in parts]).numpy() for n in names})

    # ------------------------------------------------------------------ recommend

    @torch.no_grad()
    def recommend(
        self,
        user_ids: Any,
        k: int = 10,
        fusion: dict[str, float] | None = None,
        exclude_seen: bool = True,
        where: str = "request",
    ) -> pl.DataFrame:
        """Top-k items per user: FAISS candidates by click score (seen items excluded),
        re-ranked by all heads with the fusion score prod_t p_t^w_t (rating as rating/5).

        Returns user_id, rank (1..k), item_id, score and each head's prediction.
        """
        if k <= 0:
            raise RecsysError(f"k must be positive, got {k}", where=where, fix="ask for k >= 1")
        if self.index is None:
            raise RecsysError(
                "this model has no index",
                where=where,
                fix="run `recsys-mtl index PIPELINE.toml` first",
            )
        users = user_ids if isinstance(user_ids, pl.Series) else pl.Series("user_id", user_ids)
        users = self.transform.users.ids.cast(users.rename("user_id"), where)
        fusion = {**self.retrieval.fusion, **(fusion or {})}
        unknown = [name for name in fusion if name not in self.model.tasks]
        if unknown:
            raise RecsysError(
                f"fusion names unknown tasks {unknown}",
                where=where,
                fix=f"use task names from {sorted(self.model.tasks)}",
            )
        n_candidates = min(max(k, self.retrieval.candidates), self.index.n_items)
        frames = [
            self._recommend_chunk(
                users.slice(s, CHUNK_USERS), k, n_candidates, fusion, exclude_seen, where
            )
            for s in range(0, max(users.len(), 1), CHUNK_USERS)
        ]
        return pl.concat(frames)

    def _recommend_chunk(
        self,
        users: pl.Series,
        k: int,
        n_candidates: int,
        fusion: dict[str, float],
        exclude_seen: bool,
        where: str,
    ) -> pl.DataFrame:
        model = self.model
        inputs = self._side_inputs("user", pl.DataFrame({"user_id": users}), where)
        encoded_users = model.user_encoder.encode(inputs)
        user_vectors = model.user_vectors(encoded_users).numpy().astype(np.float32)
        if exclude_seen:
            idx = inputs.ids.numpy()
            indptr, seen = csr_rows(self.seen_indptr, self.seen_items, idx)
            seen = seen - FIRST
        else:
            indptr, seen = None, None
        _, candidates = self.index.search(user_vectors, n_candidates, indptr, seen)
        n_users, n_cand = candidates.shape
        valid = torch.from_numpy(candidates >= 0)
        item_idx = torch.from_numpy(np.where(candidates >= 0, candidates + FIRST, UNKNOWN))
        pair_users = encoded_users.repeat_interleave(n_cand, dim=0)
        flat_idx = item_idx.reshape(-1)
        pair_items = model.item_encoder(flat_idx, self.item_rows().take(flat_idx))
        predictions = {
            name: values.reshape(n_users, n_cand)
            for name, values in model.predictions(
                model.forward_encoded(pair_users, pair_items)
            ).items()
        }
        log_score = torch.zeros(n_users, n_cand)
        for name, weight in fusion.items():
            if weight == 0:
                continue
            task = model.tasks[name]
            column = f"p_{name}" if task.kind == "binary" else f"{name}_pred"
            value = predictions[column] if task.kind == "binary" else predictions[column] / 5.0
            log_score += weight * torch.log(value.clamp(min=1e-12))
        log_score[~valid] = float("-inf")
        top_score, top_pos = torch.topk(log_score, min(k, n_cand), dim=1)
        keep = torch.isfinite(top_score).reshape(-1).numpy()
        rows = np.repeat(np.arange(n_users), top_pos.shape[1])[keep]
        chosen = top_pos.reshape(-1).numpy()[keep]
        flat_items = item_idx.numpy()[rows, chosen]
        out = {
            "user_id": users.gather(rows),
            "rank": (np.tile(np.arange(1, top_pos.shape[1] + 1), n_users)[keep]).astype(np.int32),
            "item_id": self.transform.items.ids.decode(flat_items),
            "score": top_score.exp().reshape(-1).numpy()[keep],
        }
        for name, values in predictions.items():
            out[name] = values.numpy()[rows, chosen]
        return pl.DataFrame(out)

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path) -> None:
        """Write the bundle atomically: a failed save leaves any earlier bundle intact."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            torch.save(self.model.state_dict(), tmp / "model.pt")
            metadata = model_metadata(self.model_cfg, self.model.tasks)
            metadata["retrieval"] = asdict(self.retrieval)
            (tmp / "model.json").write_text(json.dumps(metadata, indent=2))
            self.transform.save(tmp / "transform")
            np.savez(tmp / "seen.npz", indptr=self.seen_indptr, items=self.seen_items)
            if self.index is not None:
                self.index.save(tmp / "index.faiss")
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {
                "format_version": FORMAT_VERSION,
                "versions": _versions(),
                "files": {str(p.relative_to(tmp)): _sha256(p) for p in files},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            replace_folder(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> Recommender:
        """Load a bundle, verifying the manifest's hashes; never unpickles objects."""
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise RecsysError(
                f"'{folder}' is not a recommender bundle (no manifest.json)",
                fix="pass the model folder written by `recsys-mtl train`",
            )
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RecsysError(
                f"bundle format {manifest.get('format_version')} is not {FORMAT_VERSION}",
                where=str(folder),
                fix="retrain the model with this version of recsys-mtl",
            )
        for name, digest in manifest["files"].items():
            path = folder / name
            if not path.is_file() or _sha256(path) != digest:
                raise RecsysError(
                    f"bundle file '{name}' is missing or corrupted",
                    where=str(folder),
                    fix="retrain or re-download the model",
                )
        metadata = json.loads((folder / "model.json").read_text())
        transform = FeatureTransform.load(folder / "transform")
        model = model_from_metadata(transform, metadata)
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        seen = np.load(folder / "seen.npz", allow_pickle=False)
        index = (
            ItemIndex.load(folder / "index.faiss") if (folder / "index.faiss").is_file() else None
        )
        return cls(
            model,
            transform,
            seen["indptr"],
            seen["items"],
            RetrievalSection(**metadata["retrieval"]),
            ModelSection(**metadata["model"]),
            index,
        )


def _versions() -> dict[str, str]:
    from recsys_mtl import __version__
    from recsys_mtl.retrieval import faiss_version

    return {
        "recsys_mtl": __version__,
        "torch": torch.__version__,
        "polars": pl.__version__,
        "faiss": faiss_version(),
        "numpy": np.__version__,
    }
