"""The learning-rate schedule of `refseg train`: linear warm-up, an optional flat part, then a cosine."""
from __future__ import annotations

import math
from typing import Optional


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
