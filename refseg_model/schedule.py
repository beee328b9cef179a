"""The optimiser and learning-rate schedule of `refseg train`: AdamW in parameter groups (SAM's prompt encoder and
mask decoder may have their own lr), linear warm-up, an optional flat part, then a cosine."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch


def lr_factor(step: int, total: int, warmup_frac: float, min_ratio: float,
              cosine_start_frac: Optional[float] = None, cosine_period_frac: Optional[float] = None) -> float:
    """The lr multiplier at 0-based `step` of `total`: linear warm-up from 0.01 over `warmup_frac` of the steps,
    then flat until `cosine_start_frac` of the steps (default: no flat part), then a cosine from 1 towards
    `min_ratio` whose half-period T_max is `cosine_period_frac` of the steps (default: the rest of the run, so it
    ends at `min_ratio`; longer, as in RSRefSeg 2's configs, and it never gets there)."""
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return 0.01 + 0.99 * step / warm
    start = warm if cosine_start_frac is None else max(warm, int(cosine_start_frac * total))
    if step < start:
        return 1.0
    period = total - start if cosine_period_frac is None else cosine_period_frac * total
    progress = (step - start) / max(1, period)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


DECODER_PREFIXES = ("sam.prompt_encoder.", "sam.mask_decoder.")  # `decoder_lr` (`refseg train --decoder-lr`) applies to these


def make_optimizer(model, lr: float, decoder_lr: Optional[float], weight_decay: float
                   ) -> Tuple[List[torch.nn.Parameter], torch.optim.Optimizer]:
    """AdamW over the trainable parameters, without weight decay on biases and norms; SAM's prompt encoder and
    mask decoder at `decoder_lr` (if set), the rest at `lr`. Parameters whose lr is 0 are frozen
    (requires_grad off: no gradient is computed for them). Each group's `base_lr` is its lr before the
    schedule."""
    groups, params = [], []
    for decoder in (True, False):
        group_lr = decoder_lr if decoder and decoder_lr is not None else lr
        mine = [p for n, p in model.named_parameters()
                if p.requires_grad and n.startswith(DECODER_PREFIXES) == decoder]
        if group_lr == 0:
            for p in mine:
                p.requires_grad_(False)
            continue
        params.extend(mine)
        for wd, ps in ((weight_decay, [p for p in mine if p.ndim >= 2]), (0.0, [p for p in mine if p.ndim < 2])):
            if ps:
                groups.append({"params": ps, "weight_decay": wd, "lr": group_lr, "base_lr": group_lr})
    if not groups:
        raise ValueError("nothing to train: every learning rate is 0 (or every parameter is frozen)")
    return params, torch.optim.AdamW(groups, lr=lr)
