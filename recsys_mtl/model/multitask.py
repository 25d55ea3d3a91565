"""The multi-task model: shared side encoders -> sharing block -> one head per task."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from recsys_mtl.config import ModelSection, TaskConfig
from recsys_mtl.features.transform import FeatureTransform
from recsys_mtl.features.vocab import PAD
from recsys_mtl.model.architectures import Sharing, build_sharing, embedding_copies
from recsys_mtl.model.embeddings import (
    RowInputs,
    SideEncoder,
    SideInputs,
    StackedEncoder,
    WithStaticCopy,
)
from recsys_mtl.model.heads import DotHead, MlpHead


def task_order(tasks: dict[str, TaskConfig]) -> list[str]:
    """Tasks with every dependency before its dependants."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"tasks depend on each other in a cycle: {' -> '.join(path)}")
        parent = tasks[name].depends_on
        if parent:
            visit(parent, (*path, name))
        order.append(name)

    for name in tasks:
        visit(name, ())
    return order


def output_column(name: str, task: TaskConfig) -> str:
    """Prediction column of a task: p_<name> for binary, <name>_pred for regression."""
    return f"p_{name}" if task.kind == "binary" else f"{name}_pred"


def conditional_column(name: str, task: TaskConfig) -> str:
    """Column of a dependent task's conditional probability, e.g. p_purchase_given_click."""
    return f"p_{name}_given_{task.depends_on}"


@dataclass
class EncodedBatch:
    """A batch's encoded sides. `users` (U, Du) and `items` (I, Di) hold one row per
    distinct id when `user_index` / `item_index` (B,) say which of them each batch row
    reads, one row per batch row when the index is None."""

    users: torch.Tensor
    items: torch.Tensor
    user_index: torch.Tensor | None = None
    item_index: torch.Tensor | None = None

    def row_users(self) -> torch.Tensor:
        """(B, Du): each batch row's encoded user."""
        return (
            self.users if self.user_index is None else self.users.index_select(0, self.user_index)
        )

    def row_items(self) -> torch.Tensor:
        """(B, Di): each batch row's encoded item."""
        return (
            self.items if self.item_index is None else self.items.index_select(0, self.item_index)
        )


#: Distinct-id rows are padded to a multiple of this many, so that a run's products
#: take a handful of shapes: oneDNN (bfloat16) builds a kernel for each new shape,
#: which cost a one-epoch run of batch 1024 a fifth of its speed with exact counts.
DISTINCT_ROWS_MULTIPLE = 64


def _encode_distinct(
    encoder: nn.Module, ids: torch.Tensor, rows: RowInputs | None, distinct: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encoded rows of `ids` (B,): with `distinct`, one per distinct id (padded with PAD
    ids, encoded and never read) and each batch row's position among them; one per
    batch row where that would not be fewer."""
    if distinct:
        unique, inverse = torch.unique(ids, return_inverse=True)
        padded = -(-unique.numel() // DISTINCT_ROWS_MULTIPLE) * DISTINCT_ROWS_MULTIPLE
        if padded < ids.numel():
            unique = torch.cat([unique, unique.new_full((padded - unique.numel(),), PAD)])
            return encoder(unique, None), inverse
    return encoder(ids, rows), None


class MultiTaskModel(nn.Module):
    """Shared user/item encoders feed a sharing block and per-task heads.

    `forward` returns each task's raw output (B,): a logit for binary tasks (for a task
    that depends on another, the conditional logit, e.g. purchase given click) and the
    prediction for regression tasks. `log_probabilities` applies the entire-space
    funnel: log p(purchase) = log p(click) + log p(purchase | click). A task with
    `input_from` reads its own representation concatenated with that task's.
    """

    def __init__(
        self,
        user_encoder: SideEncoder | StackedEncoder,
        item_encoder: SideEncoder | StackedEncoder | WithStaticCopy,
        sharing: Sharing,
        heads: nn.ModuleDict,
        tasks: dict[str, TaskConfig],
    ) -> None:
        super().__init__()
        self.user_encoder = user_encoder
        self.item_encoder = item_encoder
        self.sharing = sharing
        self.heads = heads
        self.tasks = tasks
        self.order = task_order(tasks)
        self.retrieval_task = next(n for n, t in tasks.items() if t.head == "dot")

    def forward(
        self,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
        user_rows: RowInputs | None = None,
        item_rows: RowInputs | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw task outputs (B,) for user/item indices (B,) and their row features."""
        return self.forward_encoded(
            self.user_encoder(user_idx, user_rows), self.item_encoder(item_idx, item_rows)
        )

    def forward_inputs(self, users: SideInputs, items: SideInputs) -> dict[str, torch.Tensor]:
        return self.forward_encoded(
            self.user_encoder.encode(users), self.item_encoder.encode(items)
        )

    def encode(
        self,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
        user_rows: RowInputs | None = None,
        item_rows: RowInputs | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared embeddings' output: users (B, Du) and items (B, Di)."""
        return self.user_encoder(user_idx, user_rows), self.item_encoder(item_idx, item_rows)

    def distinct_sides(self) -> tuple[bool, bool]:
        """Whether the user (item) side's encoding depends on the id alone, so that a
        batch may encode each distinct id once: no row features, no random id dropout,
        and (in training) no dropout anywhere in the model."""
        dropout = self.training and any(
            isinstance(m, nn.Dropout) and m.p > 0 for m in self.modules()
        )

        def by_id_alone(encoder: nn.Module) -> bool:
            id_dropout = self.training and any(
                isinstance(m, SideEncoder) and m.id_dropout > 0 for m in encoder.modules()
            )
            return not encoder.spec.rows and not id_dropout and not dropout

        return by_id_alone(self.user_encoder), by_id_alone(self.item_encoder)

    def encode_batch(
        self,
        user_idx: torch.Tensor,
        item_idx: torch.Tensor,
        user_rows: RowInputs | None = None,
        item_rows: RowInputs | None = None,
        distinct: tuple[bool, bool] = (False, False),
    ) -> EncodedBatch:
        """The encoded sides of a batch; a side flagged in `distinct` (see
        `distinct_sides`) is encoded once per distinct id."""
        users, user_index = _encode_distinct(self.user_encoder, user_idx, user_rows, distinct[0])
        items, item_index = _encode_distinct(self.item_encoder, item_idx, item_rows, distinct[1])
        return EncodedBatch(users, items, user_index, item_index)

    def forward_batch(self, batch: EncodedBatch) -> dict[str, torch.Tensor]:
        """Raw task outputs (B,) of an encoded batch: the sharing block runs on the
        distinct ids' rows, then each batch row reads its own."""
        return self.forward_encoded(batch.users, batch.items, batch.user_index, batch.item_index)

    def forward_batch_and_vectors(
        self, batch: EncodedBatch
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """`forward_batch`'s outputs and the retrievable head's user and item vectors of
        every batch row, (B, D + 1) each, from the same representations: the click
        output is their inner product. What the in-batch retrieval loss reads, without
        running the towers a second time for the clicked rows."""
        outputs, vectors = self._outputs(
            batch.users, batch.items, batch.user_index, batch.item_index, with_vectors=True
        )
        assert vectors is not None
        return outputs, vectors

    def _split_items(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(all heads' items, the retrievable head's items): the halves of a static-copy
        encoding, or the same tensor twice."""
        if not isinstance(self.item_encoder, WithStaticCopy):
            return items, items
        width = self.item_encoder.out_dim
        return items[:, :width], items[:, width:]

    def forward_encoded(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        user_index: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw task outputs (B,) of encoded users and items; with an index, `users`
        (`items`) are distinct ids' rows and the index says which one each row reads."""
        return self._outputs(users, items, user_index, item_index)[0]

    def _outputs(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        user_index: torch.Tensor | None,
        item_index: torch.Tensor | None,
        with_vectors: bool = False,
    ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        """`forward_encoded`'s outputs and, `with_vectors`, the retrievable head's."""
        items, retrieval_items = self._split_items(items)
        reprs = self.sharing(users, items, user_index, item_index)
        if retrieval_items is not items:
            task = self.retrieval_task
            static = self.sharing.item_repr(retrieval_items, task)
            reprs[task] = (
                reprs[task][0],
                static if item_index is None else static.index_select(0, item_index),
            )
        outputs, vectors = {}, None
        for name in self.order:
            user, item = reprs[name]
            source = self.tasks[name].input_from
            if source:
                user = torch.cat([user, reprs[source][0]], dim=-1)
                item = torch.cat([item, reprs[source][1]], dim=-1)
            if with_vectors and name == self.retrieval_task:
                outputs[name], vectors = self.heads[name].logit_and_vectors(user, item)
            else:
                outputs[name] = self.heads[name](user, item)
        return outputs, vectors

    def penalty(self) -> torch.Tensor | None:
        """The sharing block's extra loss term (soft parameter sharing), or None."""
        return self.sharing.penalty()

    def log_probabilities(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """log p of every binary task (B,), with dependencies multiplied in."""
        log_p: dict[str, torch.Tensor] = {}
        for name in self.order:
            task = self.tasks[name]
            if task.kind != "binary":
                continue
            log_p[name] = F.logsigmoid(outputs[name])
            if task.depends_on:
                log_p[name] = log_p[name] + log_p[task.depends_on]
        return log_p

    def predictions(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named predictions (B,): p_<task> for binary tasks, <task>_pred for regression,
        and p_<task>_given_<parent> for dependent tasks."""
        log_p = self.log_probabilities(outputs)
        named = {}
        for name in self.order:
            task = self.tasks[name]
            named[output_column(name, task)] = log_p[name].exp() if name in log_p else outputs[name]
            if task.depends_on:
                named[conditional_column(name, task)] = torch.sigmoid(outputs[name])
        return named

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """Encoded users (B, Du) -> retrieval vectors (B, D + 1)."""
        head: DotHead = self.heads[self.retrieval_task]
        return head.user_vector(self.sharing.user_repr(users, self.retrieval_task))

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Encoded items (B, Di) -> retrieval vectors (B, D + 1); <user, item> = click logit."""
        head: DotHead = self.heads[self.retrieval_task]
        _, retrieval_items = self._split_items(items)
        return head.item_vector(self.sharing.item_repr(retrieval_items, self.retrieval_task))


def build_model(
    transform: FeatureTransform,
    cfg: ModelSection,
    tasks: dict[str, TaskConfig],
    label_means: dict[str, float] | None = None,
) -> MultiTaskModel:
    """Build a model whose feature tables come from the fitted transform."""
    copies = embedding_copies(cfg, list(tasks))
    encoders = []
    for side in (transform.users, transform.items):
        table = side.feature_table()
        parts = [
            SideEncoder(side.spec, table, cfg.embedding_dim, cfg.id_dropout) for _ in range(copies)
        ]
        encoders.append(parts[0] if copies == 1 else StackedEncoder(parts))
    user_encoder, item_encoder = encoders
    if cfg.static_retrieval_items:
        item_encoder = WithStaticCopy(item_encoder)
    sharing = build_sharing(user_encoder.copy_dim, item_encoder.copy_dim, list(tasks), cfg)
    label_means = label_means or {}
    heads = nn.ModuleDict()
    for name, task in tasks.items():
        width = sharing.out_dim * (2 if task.input_from else 1)
        if task.head == "dot":
            heads[name] = DotHead(width, cfg.output_dim)
        else:
            offset = label_means.get(name, 0.0) if task.kind == "regression" else 0.0
            heads[name] = MlpHead(width, cfg.head_hidden_dim, offset)
    return MultiTaskModel(user_encoder, item_encoder, sharing, heads, tasks)


def model_metadata(cfg: ModelSection, tasks: dict[str, TaskConfig]) -> dict[str, Any]:
    """What `build_model` needs besides the transform, as plain JSON-able data."""
    return {"model": asdict(cfg), "tasks": {name: asdict(t) for name, t in tasks.items()}}


def model_from_metadata(transform: FeatureTransform, metadata: dict[str, Any]) -> MultiTaskModel:
    cfg = ModelSection(**metadata["model"])
    tasks = {name: TaskConfig(**spec) for name, spec in metadata["tasks"].items()}
    return build_model(transform, cfg, tasks)
