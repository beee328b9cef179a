"""Evaluation with the field's metrics (gIoU, cIoU, Pr@0.5-0.9) at the original image resolution."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data.interchange import Sample
from .imageio import load_image
from .metrics import RefSegMetrics
from .predictor import RefSegPredictor


def evaluate_samples(
    predictor: RefSegPredictor,
    samples: Sequence[Sample],
    *,
    batch_size: int = 16,
    progress: bool = True,
    per_sample: Optional[List[float]] = None,
) -> Dict[str, float]:
    """Predict every sample and score it against its ground truth; returns `RefSegMetrics.compute()`.

    With `per_sample` (a list), each sample's IoU is appended to it in order.
    """
    from .data.public import load_sample_mask

    @lru_cache(maxsize=2 * batch_size)
    def image(path: str) -> np.ndarray:
        return load_image(path)

    queries = [(str(s.image), s.expression) for s in samples]
    preds = predictor.predict_many(image, queries, batch_size=batch_size, progress=progress)
    metrics = RefSegMetrics()
    for s, p in zip(samples, preds):
        gt = load_sample_mask(s)
        if gt.shape != p.mask.shape:
            raise ValueError(f"{s.mask}: mask {gt.shape} does not match image {p.mask.shape}")
        iou = metrics.add(p.mask, gt)
        if per_sample is not None:
            per_sample.append(iou)
    return metrics.compute()
