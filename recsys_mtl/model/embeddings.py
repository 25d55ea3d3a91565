"""Shared embedding layers: one encoder per side (users, items) over ids and side features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys_mtl.features.transform import SideArrays, SideSpec
from recsys_mtl.features.vocab import UNKNOWN


@dataclass
class RowInputs:
    """Per-row inputs of one side for B rows (context, time, history): categorical
    (B, Cr) int64, numeric (B, Fr) float32, lists name -> (B, L) int64."""

    categorical: torch.Tensor
    numeric: torch.Tensor
    lists: dict[str, torch.Tensor]

    def take(self, index: torch.Tensor | slice) -> RowInputs:
        return RowInputs(
            self.categorical[index],
            self.numeric[index],
            {k: v[index] for k, v in self.lists.items()},
        )

    def to(self, device: torch.device) -> RowInputs:
        """The same inputs on `device` (no copy when already there)."""
        return RowInputs(
            self.categorical.to(device, non_blocking=True),
            self.numeric.to(device, non_blocking=True),
            {k: v.to(device, non_blocking=True) for k, v in self.lists.items()},
        )

    @classmethod
    def concat(cls, parts: list[RowInputs]) -> RowInputs:
        return cls(
            torch.cat([p.categorical for p in parts]),
            torch.cat([p.numeric for p in parts]),
            {k: torch.cat([p.lists[k] for p in parts]) for k in parts[0].lists},
        )

    @classmethod
    def from_arrays(cls, arrays: SideArrays) -> RowInputs:
        return cls(
            torch.from_numpy(arrays.categorical),
            torch.from_numpy(arrays.numeric),
            {k: torch.from_numpy(v) for k, v in arrays.lists.items()},
        )


@dataclass
class SideInputs:
    """Encoded inputs for B rows of one side: ids (B,), categorical (B, C), numeric (B, F),
    lists name -> (B, L); table features first, then row features."""

    ids: torch.Tensor
    categorical: torch.Tensor
    numeric: torch.Tensor
    lists: dict[str, torch.Tensor]


class SideEncoder(nn.Module):
    """Embeds one side's id and side features and concatenates them: (B,) -> (B, out_dim).

    The encoded feature table of every known id is a buffer, so a batch needs only ids;
    `encode` also takes explicit features (cold ids with side features at query time).
    List features are mean-pooled embedding bags; numerics go through one linear layer.
    """

    def __init__(
        self, spec: SideSpec, table: SideArrays, dim: int, id_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.spec = spec
        self.id_dropout = id_dropout
        # ids from spec.id_embedding_rows on (rarely seen in training) share the unknown row
        self.id_rows = spec.id_embedding_rows
        self.id_embedding = nn.Embedding(self.id_rows, dim, padding_idx=0)
        self.categorical = nn.ModuleList(
            nn.Embedding(size, dim, padding_idx=0) for size in spec.categorical.values()
        )
        self.lists = nn.ModuleDict(
            {name: nn.Embedding(size, dim, padding_idx=0) for name, size in spec.lists.items()}
        )
        n_numeric = len(spec.numeric)
        self.numeric = nn.Linear(n_numeric, dim) if n_numeric else None
        self.register_buffer("categorical_table", torch.from_numpy(table.categorical))
        self.register_buffer("numeric_table", torch.from_numpy(table.numeric))
        self.table_lists = list(table.lists)
        for name, values in table.lists.items():
            self.register_buffer(f"list_table_{name}", torch.from_numpy(values))
        self.out_dim = dim * (1 + len(self.categorical) + len(self.lists) + (1 if n_numeric else 0))
        self.copy_dim = self.out_dim
        for emb in [self.id_embedding, *self.categorical, *self.lists.values()]:
            nn.init.normal_(emb.weight, std=0.05)
            with torch.no_grad():
                emb.weight[0].zero_()

    def lookup(self, ids: torch.Tensor, rows: RowInputs | None = None) -> SideInputs:
        """Inputs of known ids (B,): table features from the buffers, then `rows`' row
        features (absent rows: unknown categories, zero numerics, empty lists)."""
        rows = rows if rows is not None else self.default_rows(ids.shape[0])
        return SideInputs(
            ids=ids,
            categorical=torch.cat([self.categorical_table[ids], rows.categorical], dim=1),
            numeric=torch.cat([self.numeric_table[ids], rows.numeric], dim=1),
            lists={
                **{name: getattr(self, f"list_table_{name}")[ids] for name in self.table_lists},
                **rows.lists,
            },
        )

    def default_rows(self, n: int) -> RowInputs:
        spec = self.spec.rows
        n_cat = sum(1 for c in spec if c.kind in ("categorical", "bucket"))
        n_num = sum(1 for c in spec if c.kind == "numeric")
        device = self.id_embedding.weight.device
        return RowInputs(
            torch.full((n, n_cat), UNKNOWN, dtype=torch.int64, device=device),
            torch.zeros((n, n_num), device=device),
            {
                c.name: torch.zeros((n, c.max_length), dtype=torch.int64, device=device)
                for c in spec
                if c.kind == "list"
            },
        )

    def _dropped(self, ids: torch.Tensor) -> torch.Tensor:
        """The id embedding row of each id (B,): ids seen fewer than
        `features.id_min_count` times in training read the unknown row (so it learns what a
        rarely seen id scores beside its side features, and a cold id at query time reads
        it); in training, each other known id also becomes unknown with probability
        `id_dropout`."""
        if self.id_rows < self.spec.id_vocab_size:
            ids = ids.masked_fill(ids >= self.id_rows, UNKNOWN)
        if not self.training or self.id_dropout <= 0.0:
            return ids
        drop = (torch.rand(ids.shape, device=ids.device) < self.id_dropout) & (ids > UNKNOWN)
        return torch.where(drop, torch.full_like(ids, UNKNOWN), ids)

    def encode(self, inputs: SideInputs) -> torch.Tensor:
        parts = [self.id_embedding(self._dropped(inputs.ids))]
        parts += [emb(inputs.categorical[:, j]) for j, emb in enumerate(self.categorical)]
        for name, emb in self.lists.items():
            tokens = inputs.lists[name]  # (B, L)
            mask = (tokens > 0).unsqueeze(-1).float()
            parts.append((_list_rows(emb, tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        if self.numeric is not None:
            parts.append(self.numeric(inputs.numeric))
        return torch.cat(parts, dim=-1)

    def forward(self, ids: torch.Tensor, rows: RowInputs | None = None) -> torch.Tensor:
        return self.encode(self.lookup(ids, rows))


def _list_rows(table: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
    """The rows (B, L, D) of a list feature's tokens (B, L), for pooling under its
    padding mask. A dense table is read with `index_select`: the mask zeroes the padding
    positions and their gradients, which is all `padding_idx` does here, and its backward
    (an index_add) took 64 us against the embedding backward's 213 us for (768, 8) tokens
    of dim 16 on 2 cores (+5.6 % a training step for the demo model, which pools recent
    items and genres). Sparse-gradient tables keep the embedding's own lookup."""
    if table.sparse:
        return table(tokens)
    return table.weight.index_select(0, tokens.reshape(-1)).view(*tokens.shape, -1)


class StackedEncoder(nn.Module):
    """Independent copies of one side's encoder (separate embedding tables per task group,
    for the no-sharing baseline): the same inputs, outputs concatenated (B, copies * D)."""

    def __init__(self, encoders: list[SideEncoder]) -> None:
        super().__init__()
        self.copies = nn.ModuleList(encoders)
        self.spec = encoders[0].spec
        self.copy_dim = encoders[0].out_dim
        self.out_dim = self.copy_dim * len(encoders)

    def lookup(self, ids: torch.Tensor, rows: RowInputs | None = None) -> SideInputs:
        return self.copies[0].lookup(ids, rows)

    def default_rows(self, n: int) -> RowInputs:
        return self.copies[0].default_rows(n)

    def encode(self, inputs: SideInputs) -> torch.Tensor:
        return torch.cat([encoder.encode(inputs) for encoder in self.copies], dim=-1)

    def forward(self, ids: torch.Tensor, rows: RowInputs | None = None) -> torch.Tensor:
        return self.encode(self.lookup(ids, rows))


def without_rows(encoder: SideEncoder | StackedEncoder, inputs: SideInputs) -> SideInputs:
    """The same inputs with every row feature (history, recency, context) replaced by its
    absent value: what is known of the id whatever the time."""
    defaults = encoder.default_rows(inputs.ids.shape[0])
    n_cat, n_num = defaults.categorical.shape[1], defaults.numeric.shape[1]
    table_cat = inputs.categorical.shape[1] - n_cat
    table_num = inputs.numeric.shape[1] - n_num
    return SideInputs(
        ids=inputs.ids,
        categorical=torch.cat([inputs.categorical[:, :table_cat], defaults.categorical], 1),
        numeric=torch.cat([inputs.numeric[:, :table_num], defaults.numeric], 1),
        lists={**inputs.lists, **defaults.lists},
    )


class WithStaticCopy(nn.Module):
    """Encodes each row twice, (B, 2 * D): with its row features and without them
    (`without_rows`). The model reads the first half everywhere except in the retrievable
    head, which sees only the second: item vectors that do not change with time."""

    def __init__(self, encoder: SideEncoder | StackedEncoder) -> None:
        super().__init__()
        self.inner = encoder
        self.spec = encoder.spec
        self.copy_dim = encoder.copy_dim
        self.out_dim = encoder.out_dim  # of each half

    def lookup(self, ids: torch.Tensor, rows: RowInputs | None = None) -> SideInputs:
        return self.inner.lookup(ids, rows)

    def default_rows(self, n: int) -> RowInputs:
        return self.inner.default_rows(n)

    def encode(self, inputs: SideInputs) -> torch.Tensor:
        static = without_rows(self.inner, inputs)
        return torch.cat([self.inner.encode(inputs), self.inner.encode(static)], dim=-1)

    def forward(self, ids: torch.Tensor, rows: RowInputs | None = None) -> torch.Tensor:
        return self.encode(self.lookup(ids, rows))
