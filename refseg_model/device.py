"""Device names, parsed once for the CLI, the predictor, training and the workers' DEVICE setting."""
from __future__ import annotations

import re

import torch

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def resolve_device(name: str) -> str:
    """"auto" (or empty) -> "cuda" when a GPU is visible, else "cpu"; "cpu", "cuda" and "cuda:N" are returned as
    given. Anything else is a ValueError that names the accepted forms."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    m = _DEVICE.match(name)
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    return name


def cuda_index(name: str, local_rank: int, world: int) -> int:
    """Which GPU a training process uses: its LOCAL_RANK under torchrun (world > 1) or for a bare "cuda", else the
    N of "cuda:N" (so a worker pinned to DEVICE=cuda:1 fine-tunes on GPU 1, not GPU 0)."""
    m = _DEVICE.match(name)
    if world > 1 or m is None or m.group(2) is None:
        return local_rank
    return int(m.group(2))
