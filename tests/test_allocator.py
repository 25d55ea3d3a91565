"""The training process's allocator settings (`training.retain_freed_memory`).

Each check runs in a fresh interpreter: the settings are process-wide, and whether a
block is mapped depends on what the process allocated and freed before.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)

# How many bytes a fresh 24 MiB malloc adds to glibc's mmapped regions (mallinfo2's
# hblkhd): the whole block by default (above the 128 KiB mmap threshold), none once the
# threshold is 32 MiB and the block comes from the heap, to be reused after it is freed.
MAPPED_BY_A_24_MIB_BLOCK = """
import ctypes, sys
from types import SimpleNamespace
from recsys_mtl.config import TrainingSection
from recsys_mtl.training.trainer import Trainer

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    ).split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
cfg = TrainingSection(retain_freed_memory=sys.argv[1] == "true", average_decay=0.0)
Trainer._prepare(SimpleNamespace(cfg=cfg, seed=0, model=None))
before = libc.mallinfo2().hblkhd
block = libc.malloc(24 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


def _mapped_bytes(retain: bool) -> int:
    done = subprocess.run(
        [sys.executable, "-c", MAPPED_BY_A_24_MIB_BLOCK, "true" if retain else "false"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_a_training_process_keeps_large_blocks_on_its_heap() -> None:
    assert _mapped_bytes(retain=True) == 0


def test_the_setting_off_leaves_the_allocator_as_it_was() -> None:
    assert _mapped_bytes(retain=False) >= 24 << 20


def test_retain_freed_memory_reports_that_it_took_effect() -> None:
    from recsys_mtl.training.allocator import retain_freed_memory

    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # once per process, the same answer
