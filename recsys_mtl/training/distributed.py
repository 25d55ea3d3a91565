"""Data-parallel training over torch.distributed: who this process is and what it shares.

`torchrun --nproc-per-node N -m recsys_mtl train PIPELINE.toml` starts N processes with
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set; `from_environment`
joins them into one process group (gloo on CPU, nccl on CUDA). Each rank trains on its
own contiguous share of the training rows, gradients are averaged by
DistributedDataParallel, rank 0 validates (and tells the others the result), logs to
MLflow and writes checkpoints and the model bundle. Without those variables everything
here is a single-process no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from recsys_mtl.errors import RecsysError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: rank in 0..world_size-1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, rows: int) -> list[tuple[int, int]]:
        """This rank's row ranges of a split of `rows` rows: every rank gets
        ceil(rows / world_size) rows, contiguous; the last share wraps round to the
        first rows (as torch's DistributedSampler pads), so all ranks take the same
        number of steps."""
        if not self.enabled:
            return [(0, rows)]
        length = -(-rows // self.world_size)
        position, stop = self.rank * length, (self.rank + 1) * length
        ranges = []
        while position < stop and rows:
            first = position % rows
            last = min(rows, first + stop - position)
            ranges.append((first, last))
            position += last - first
        return ranges

    def local_batch_size(self, batch_size: int) -> int:
        """Rows per step on this rank, so that one step of all ranks is `batch_size` rows."""
        if batch_size % self.world_size:
            raise RecsysError(
                f"training.batch_size {batch_size} is not divisible by the "
                f"{self.world_size} processes",
                fix=f"use a multiple of {self.world_size}, e.g. "
                f"{batch_size - batch_size % self.world_size}",
            )
        return batch_size // self.world_size

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum of `tensor` over ranks, in place."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over ranks (in place, no gradient)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in tensors:
                dist.all_reduce(tensor.data, op=dist.ReduceOp.SUM)
                tensor.data.div_(self.world_size)

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object of our own making)."""
        if not self.enabled:
            return value
        box: list[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = Distributed()


def from_environment(device: str = "cpu") -> Distributed:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1);
    otherwise the single-process `SINGLE`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Distributed(rank, world_size, local_rank)


def shutdown() -> None:
    """Leave the process group (if joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str, distributed: Distributed = SINGLE) -> torch.device:
    """The torch device of `training.device` ('cpu', 'cuda', 'cuda:N', 'auto'); in a
    distributed run on CUDA each rank takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecsysError(
                f"training.device is '{name}' but torch {torch.__version__} sees no GPU "
                f"(CUDA build: {torch.version.cuda or 'no'})",
                fix="use --device cpu (or 'auto'), or install a CUDA build of torch on a "
                "machine with a GPU",
            )
        if distributed.enabled and name == "cuda":
            return torch.device("cuda", distributed.local_rank)
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise RecsysError(
                f"training.device is '{name}' but only {torch.cuda.device_count()} GPU(s) "
                "are visible",
                fix="use 'cuda' or an index below the GPU count",
            )
        return torch.device("cuda", index)
    return torch.device("cpu")
