"""Evaluation with the field's metrics (gIoU, cIoU, Pr@0.5-0.9) at the original image resolution."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from formats.datasets.sample import Sample
from formats.images import load_image
from formats.metrics import RefSegMetrics

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
    from formats.datasets.sample_mask import load_sample_mask

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


def batch_intersection_union(pred: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union counts for a batch, on the tensors' device.

    Args:
        pred: B x H x W bool tensor (other dtypes: non-zero = target).
        gt: B x H x W tensor of the same shape.

    Returns:
        (inter, union): two int64 tensors of shape B. Feed them to `RefSegMetrics.add_counts` together with
        `iou_from_counts(inter[i], union[i])`.
    """
    if pred.dim() != 3 or pred.shape != gt.shape:
        raise ValueError(f"pred and gt must both be B x H x W with the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")
    p = pred if pred.dtype == torch.bool else pred != 0
    g = gt if gt.dtype == torch.bool else gt != 0
    inter = (p & g).flatten(1).sum(dim=1, dtype=torch.int64)
    union = (p | g).flatten(1).sum(dim=1, dtype=torch.int64)
    return inter, union


def quick_eval(model, val, device, batch_size: int = 16) -> Dict[str, float]:
    """Metrics on in-memory (image, mask, expression) triplets, through the predictor's code path."""
    modes = [(m, m.training) for m in model.modules()]  # restored module by module (frozen norms stay in eval)
    pred = RefSegPredictor(model, device=device, cache_size=0)
    images = {str(i): img for i, (img, _, _) in enumerate(val)}
    preds = pred.predict_many(images.__getitem__, [(str(i), e) for i, (_, _, e) in enumerate(val)], batch_size)
    metrics = RefSegMetrics()
    for (_, gt, _), p in zip(val, preds):
        metrics.add(p.mask, gt)
    for m, training in modes:
        m.training = training
    return metrics.compute()
