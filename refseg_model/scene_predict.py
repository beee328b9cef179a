"""Pre-annotations for scene chips (`refseg tasks --predict`): the model as a plain function.

labelstudio.scene_tasks never imports torch; it takes a `ChipPredict` function, chip RGB + expressions ->
[(mask, score)], and this module builds one from a checkpoint. Each chip is encoded once and decoded for every
expression (RefSegPredictor.predict), so N expressions cost one image encoding, not N.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .predictor import RefSegPredictor, resolve_device


def chip_predictor(checkpoint: str = "demo", device: str = "auto", threads: Optional[int] = None
                   ) -> Tuple[Callable[[np.ndarray, Sequence[str]], List[Tuple[np.ndarray, float]]], str]:
    """(predict function, model version) for `checkpoint` (demo | preset:NAME | checkpoint directory)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    predictor = RefSegPredictor.from_spec(checkpoint, device=resolve_device(device), cache_size=1)

    def predict(chip: np.ndarray, expressions: Sequence[str]) -> List[Tuple[np.ndarray, float]]:
        return [(p.mask, p.score) for p in predictor.predict(chip, list(expressions))]

    return predict, predictor.version
