"""Zoom-in for later clicks on small objects (RITM's `ZoomIn`, FocalClick).

A small object covers few image-embedding tokens (the demo: 32 x 32 tokens for a 128 px frame, so a 12 px car is
3 x 3 of them), and its mask plateaus below the IoU an annotator accepts however often they click. From the
second click on, when the previous answer is small, `RefSegPredictor.predict_sequence` answers on a square crop
around it and the positive clicks instead, encoded at the model's full input size, and pastes the crop's
logits back into the full answer. The crop is answered from clicks alone: the expression describes the whole
scene, and its spatial words mean nothing on a crop.

A zoomed click costs an image-encoder pass on the crop (cached per crop, so repeated clicks in the same crop
re-run only the decoder). Models trained with `refseg train --zoom-frac` have seen such crops; others may
answer a crop worse than the full image (benchmarks/zoom_in_study.py measures both).

Sizes are fractions of the image's longer side, so that they mean the same on every image size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

Point = Tuple[float, float, bool]  # (x, y, positive) in image pixels

# at a 128 px frame: objects up to 24 px (6 x 6 of 32 x 32 tokens), crops of at least 40 px
ZOOM_MAX_OBJECT = 24 / 128
ZOOM_MIN_CROP = 40 / 128
ZOOM_EXPAND = 1.4  # crop side / the longer side of the box around the mask and the positive clicks


def bounding_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1), inclusive, of a non-empty H x W bool mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def longest_side(mask: np.ndarray) -> int:
    """The longer side of the bounding box of a non-empty H x W bool mask, in pixels."""
    x0, y0, x1, y1 = bounding_box(mask)
    return max(x1 - x0 + 1, y1 - y0 + 1)


def crop_square(mask: np.ndarray, points: Sequence[Point], expand: float, min_crop: int) -> Tuple[int, int, int]:
    """(x0, y0, side) of the square crop around a non-empty `mask` (H x W bool) and the positive `points`:
    `expand` x their box's longer side, at least `min_crop` px, at most the image, centred, moved inside it."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    xs = np.concatenate([xs, [p[0] for p in points if p[2]]])
    ys = np.concatenate([ys, [p[1] for p in points if p[2]]])
    side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) * expand
    side = int(round(min(max(side, min_crop), h, w)))
    x0 = int(round((xs.min() + xs.max() + 1 - side) / 2))
    y0 = int(round((ys.min() + ys.max() + 1 - side) / 2))
    return min(max(0, x0), w - side), min(max(0, y0), h - side), side


@dataclass(frozen=True)
class ZoomIn:
    """When and where a click is answered on a crop. Fractions of the image's longer side."""

    max_object: float = ZOOM_MAX_OBJECT  # zoom only while the previous mask's box is at most this
    min_crop: float = ZOOM_MIN_CROP
    expand: float = ZOOM_EXPAND

    def too_large(self, side: int, shape: Tuple[int, int]) -> bool:
        """Whether an object whose box's longer side is `side` px, on an image of `shape` (H, W), is too large to
        zoom into."""
        return side > self.max_object * max(shape)

    def crop(self, mask: np.ndarray, points: Sequence[Point]) -> Optional[Tuple[int, int, int]]:
        """(x0, y0, side) of the crop for the next answer, given the previous answer's mask (H x W bool) and
        all clicks so far; None (answer on the full image) when that mask is empty or not small, or when the
        last click falls outside the crop (it cannot: it is positive, or on the mask; but coordinates are
        floats)."""
        if not mask.any() or not points:
            return None
        if self.too_large(longest_side(mask), mask.shape):
            return None
        longer = max(mask.shape)
        x0, y0, side = crop_square(mask, points, self.expand, int(round(self.min_crop * longer)))
        x, y, _ = points[-1]
        return (x0, y0, side) if x0 <= x < x0 + side and y0 <= y < y0 + side else None
