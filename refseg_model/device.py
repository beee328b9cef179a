"""Device names, parsed once for the CLI, the predictor, training and the workers' DEVICE setting; the device a
training process runs on (one GPU per torchrun process)."""
from __future__ import annotations

import os
import re
from typing import Tuple

import torch
import torch.distributed as dist

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


def dist_info() -> Tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_training_device(device: str, threads: int = 0) -> Tuple[torch.device, int, int]:
    """(device, rank, world) of this training process: under torchrun the process group is started (NCCL on
    GPUs, gloo on CPU) and each process takes its LOCAL_RANK's GPU; on CPU, `threads` (0: the cores shared out
    among the node's processes)."""
    rank, world, local = dist_info()
    name = resolve_device(device)
    use_cuda = torch.cuda.is_available() and name.startswith("cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        index = cuda_index(name, local, world)
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    return dev, rank, world
