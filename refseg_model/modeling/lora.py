"""LoRA adapters through `peft`, applied to frozen foundation towers (as RSRefSeg 2 does)."""
from __future__ import annotations

from typing import List, Union

from torch import nn


def add_lora(module: nn.Module, target_modules: Union[List[str], str], rank: int,
             alpha: int | None = None) -> nn.Module:
    """Freeze `module` and inject rank-`rank` LoRA adapters into the named linear layers (in place).

    Only the adapter weights stay trainable. `target_modules` are suffixes of module names, or one regular
    expression that must match a whole module name (peft semantics).
    """
    from peft import LoraConfig, inject_adapter_in_model

    for p in module.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=0.0, target_modules=target_modules, bias="none")
    return inject_adapter_in_model(cfg, module)
