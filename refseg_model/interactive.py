"""Simulated clicks: the standard interactive-segmentation protocol (RITM / SAM), batched in torch.

After each answer the annotator clicks at the point deepest inside the larger error region: where the target
was missed (false negative) a positive click, where the mask spills over (false positive) a negative one.
"Deepest" and "larger" as in RITM's NoC protocol: the error whose distance-to-boundary maximum is larger wins,
and the click goes to that maximum. The distance is a chessboard distance from repeated 3 x 3 erosions (no
scipy), with ties broken towards the middle of the ridge by a small smoothed-depth term; pixels outside
`valid` (the frame's zero padding) count as background, so clicks keep off the image border as in RITM.

Used by training (`train.py --interactive-frac`, on the low-res M x M grid, no gradient) and by the annotator
benchmark (`benchmarks/annotator_effort.py`, on original-size masks). Everything is deterministic given its
inputs; the random parts of training (prompt kinds, first clicks inside the target, box jitter) take the run's
seeded generator.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# How a simulated interaction starts. "wrong-text+click": another row's expression on this image plus a click on
# the true target -- the suggestion the annotator is correcting is about something else (an expression the model
# misreads, a domain it has not seen), so the clicks must win over the text; without it the decoder learns to
# trust the text's answer, which on unseen scenes is where a click is needed most.
INITIAL_KINDS = ("text", "click", "box", "text+click", "wrong-text+click")


def depth(region: torch.Tensor, max_iter: Optional[int] = None) -> torch.Tensor:
    """region B x H x W bool -> float B x H x W: erosions survived (0 outside the region, 1 on its rim, ...)
    plus < 0.5 of tie-breaking smoothed depth."""
    cur = region.float()[:, None]
    d = torch.zeros_like(cur)
    n = max_iter or (max(cur.shape[-2:]) + 1) // 2 + 1
    for _ in range(n):
        if not bool(cur.any()):
            break
        d = d + cur
        cur = 1.0 - F.max_pool2d(F.pad(1.0 - cur, (1, 1, 1, 1), value=1.0), 3, stride=1)
    smooth = F.avg_pool2d(F.pad(d, (2, 2, 2, 2), value=0.0), 5, stride=1)
    return (d + 0.4 * smooth / (smooth.amax(dim=(-2, -1), keepdim=True) + 1e-6) * (d > 0))[:, 0]


def _argmax_xy(score: torch.Tensor) -> torch.Tensor:
    """score B x H x W -> B x 2 (x, y) pixel of the maximum."""
    w = score.shape[-1]
    flat = score.flatten(1).argmax(dim=1)
    return torch.stack([flat % w, torch.div(flat, w, rounding_mode="floor")], dim=1)


def next_clicks(pred: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One corrective click per row.

    pred, target, valid: B x H x W bool (valid: pixels of the image; default all).
    -> (xy B x 2 float, pixel centres in this grid's pixels; positive B bool; has_error B bool — rows with
    nothing to correct get a click anyway, at their deepest target pixel, and has_error False).
    An empty prediction gives the protocol's first click: the deepest point of the target.
    """
    if valid is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    fn = target & ~pred & valid
    fp = pred & ~target & valid
    dfn, dfp = depth(fn), depth(fp)
    mfn, mfp = dfn.flatten(1).amax(1), dfp.flatten(1).amax(1)
    positive = mfn >= mfp
    has_error = (mfn > 0) | (mfp > 0)
    score = torch.where(positive[:, None, None], dfn, dfp)
    fallback = depth(target & valid)
    score = torch.where(has_error[:, None, None], score, fallback)
    positive = positive | ~has_error
    return _argmax_xy(score).float(), positive, has_error


def random_points_in(region: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """A uniformly random pixel of each row's region (SAM's first click), B x H x W bool -> (xy B x 2, ok B).
    Rows with an empty region get the centre and ok False."""
    b, h, w = region.shape
    weights = region.flatten(1).float()
    ok = weights.sum(1) > 0
    weights = torch.where(ok[:, None], weights, torch.ones_like(weights))
    u = torch.rand(b, generator=generator, device=generator.device).to(region.device)
    cdf = weights.cumsum(1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp(max=h * w - 1)[:, 0]
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], 1).float(), ok


def boxes_of(region: torch.Tensor, generator: Optional[torch.Generator] = None, jitter: float = 0.1,
             max_jitter: float = 20.0) -> torch.Tensor:
    """Bounding boxes B x 4 (x0, y0, x1, y1; pixel edges) of B x H x W bool regions, optionally jittered as SAM
    trains (each side moved by up to `jitter` of the box side, at most `max_jitter` pixels). Empty region ->
    the whole grid."""
    b, h, w = region.shape
    rows, cols = region.any(2), region.any(1)
    ar_h = torch.arange(h, device=region.device).float()
    ar_w = torch.arange(w, device=region.device).float()
    big = float(max(h, w)) * 4
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -big).amax(1) + 1
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -big).amax(1) + 1
    box = torch.stack([x0, y0, x1, y1], 1)
    empty = ~rows.any(1)
    box = torch.where(empty[:, None], torch.tensor([0.0, 0.0, w, h], device=region.device), box)
    if generator is not None and jitter > 0:
        side = torch.stack([x1 - x0, y1 - y0, x1 - x0, y1 - y0], 1).clamp(min=1)
        noise = (torch.rand(b, 4, generator=generator, device=generator.device).to(region.device) * 2 - 1)
        box = box + (noise * side * jitter).clamp(-max_jitter, max_jitter)
        box = torch.stack([box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w),
                           box[:, 3].clamp(0, h)], 1)
    return box


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """B x H x W bool -> B IoU (empty vs empty = 1)."""
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
