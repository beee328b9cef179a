"""Reading published foundation-model checkpoints into our modules, without executing code, all-or-nothing.

Shared by the segmenters (SAM 1 `sam_vit_*.pth`, SAM 2.1 `sam2.1_hiera_*.pt`): a file is read with
`torch.load(weights_only=True)` or from `.safetensors`, a `{"model": state_dict}` wrapper is unwrapped, and a
state dict is loaded only if every key and shape matches (a wrong variant is an error, never a partial load).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from torch import nn


def load_state_dict_file(path: str | Path) -> Dict[str, torch.Tensor]:
    """Read a state dict without executing code: safetensors, or a torch pickle with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def load_exactly(module: nn.Module, state: Dict[str, torch.Tensor], source: str | Path, name: str) -> None:
    """Load `state` into `module`; a tensor of another shape, a missing key or an unexpected key is a ValueError
    ("SOURCE does not match the configured NAME ...") and nothing is loaded then."""
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{source} does not match the configured {name} ({len(wrong)} tensors of another shape, "
                         f"e.g. {wrong[:3]}): check the preset's {name} variant")
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source} does not match the configured {name} ({len(missing)} missing keys, e.g. "
                         f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}): check the preset's "
                         f"{name} variant")
    module.load_state_dict(state, strict=True)
