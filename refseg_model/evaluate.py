"""Evaluation with the field's metrics (gIoU, cIoU, Pr@0.5-0.9) at the original image resolution."""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from formats.datasets.sample import Sample
from formats.images import load_image
from formats.metrics import RefSegMetrics, sample_iou

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


def simulate_clicks(predictor: RefSegPredictor, image: np.ndarray, gt: np.ndarray, expression: Optional[str],
                    max_clicks: int, stop_at: float = 1.01, latencies: Optional[List[float]] = None,
                    clicks: Optional[List[tuple]] = None) -> List[float]:
    """IoU after 0..max_clicks simulated corrective clicks on one sample (RITM / SAM NoC protocol): after each
    answer a click at the point deepest inside the larger error region (missed target -> positive, false area
    -> negative; `interactive.next_clicks`); every request carries all clicks so far and goes through
    `predict_sequence`, as the workers' requests do (the previous answer as mask input; zoom-in where the
    predictor has it on). With an expression the first answer is the text's (IoU@0); without one (a SAM click
    tool) there is no mask before the first click (0).

    gt H x W bool (the image's size). Stops early once IoU >= stop_at (the rest repeats the last IoU);
    `latencies` gets each click's seconds, `clicks` (an empty list) each click (x, y, positive)."""
    import time

    from .interactive import next_clicks
    from .predictor import Answer, AnswerMemory

    target = torch.from_numpy(np.asarray(gt, dtype=bool))[None]
    memory = AnswerMemory(max_clicks + 2)  # this sample's answers only
    key, _ = predictor.embed(image)
    if expression:
        p = predictor.predict_prompts(image, expression, key=key)
        memory.put(memory.key(key, expression, [], None), Answer(p.low_res))  # the first click's previous mask
        pred = p.mask
    else:
        pred = np.zeros_like(gt, dtype=bool)
    ious = [sample_iou(pred, gt) if expression else 0.0]
    points: List[tuple] = [] if clicks is None else clicks
    for _ in range(max_clicks):
        if ious[-1] >= stop_at:
            ious.append(ious[-1])
            continue
        xy, positive, _ = next_clicks(torch.from_numpy(pred)[None], target)
        points.append((float(xy[0, 0]), float(xy[0, 1]), bool(positive[0])))  # pixel index, as in training
        t0 = time.perf_counter()
        pred = predictor.predict_sequence(image, expression or None, points, None, memory, key).mask
        if latencies is not None:
            latencies.append(time.perf_counter() - t0)
        ious.append(sample_iou(pred, gt))
    return ious


def evaluate_clicks(predictor: RefSegPredictor, samples: Sequence[Sample], clicks: int = 1,
                    per_sample: Optional[List[float]] = None) -> Dict[str, float]:
    """Mean IoU of the expression's answer and after `clicks` simulated corrective clicks on it
    (`simulate_clicks`; a sample with expression "" is clicked from nothing, as SAM's click tool), over
    `samples`: {"IoU@0": ..., "IoU@<clicks>": ...} in [0, 1] (empty: {}). With `per_sample` (a list), each
    sample's IoU after the clicks is appended to it in order."""
    from formats.datasets.sample_mask import load_sample_mask

    curves = [simulate_clicks(predictor, load_image(str(s.image)), load_sample_mask(s), s.expression, clicks)
              for s in samples]
    if per_sample is not None:
        per_sample.extend(c[-1] for c in curves)
    if not curves:
        return {}
    return {"IoU@0": float(np.mean([c[0] for c in curves])), f"IoU@{clicks}": float(np.mean([c[-1] for c in curves]))}


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
