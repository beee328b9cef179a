"""Geometry augmentation that keeps the expression true: flipping an image flips its spatial words.

A horizontal flip swaps left/right (and west/east), a vertical flip swaps top/bottom, above/below, upper/lower,
north/south. "over" and "under" are left alone: in aerial text they are about height above the ground ("the
bridge over the river", "the cars under the trees"), not a direction in the image plane, so no flip changes them.
Colour words are never touched, so no colour augmentation beyond mild brightness is applied.

`random_zoom` (`refseg train --zoom-frac`) trains what zoom-in clicks ask of the model: a small target seen on an
upsampled crop around it, answered from clicks alone (benchmarks/zoom_in_study.py).

The paper's recipe (`refseg train --recipe rsrefseg2`) trains without any augmentation.
"""
from __future__ import annotations

import re
from typing import Dict, NamedTuple

import numpy as np

from ..zoom_in import ZOOM_MAX_OBJECT, ZOOM_MIN_CROP, bounding_box, longest_side

_H_SWAP = {"left": "right", "right": "left", "west": "east", "east": "west",
           "leftmost": "rightmost", "rightmost": "leftmost", "western": "eastern", "eastern": "western"}
_V_SWAP = {"top": "bottom", "bottom": "top", "above": "below", "below": "above", "upper": "lower",
           "lower": "upper", "north": "south", "south": "north", "topmost": "bottommost",
           "bottommost": "topmost", "northern": "southern", "southern": "northern"}


def _swap_words(text: str, table: Dict[str, str]) -> str:
    pattern = re.compile(r"\b(" + "|".join(sorted(table, key=len, reverse=True)) + r")\b", re.IGNORECASE)

    def repl(m: re.Match) -> str:
        word = m.group(0)
        out = table[word.lower()]
        return out.capitalize() if word[0].isupper() else out

    return pattern.sub(repl, text)


def flip_expression(expression: str, horizontal: bool) -> str:
    return _swap_words(expression, _H_SWAP if horizontal else _V_SWAP)


def random_flip(image: np.ndarray, mask: np.ndarray, expression: str, rng: np.random.Generator):
    """Flip image (H x W x 3) and mask (H x W) left-right and/or up-down at random, rewriting the expression."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
        expression = flip_expression(expression, horizontal=True)
    if rng.random() < 0.5:
        image, mask = image[::-1], mask[::-1]
        expression = flip_expression(expression, horizontal=False)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), expression


ZOOM_TRAIN_EXPAND = (1.2, 2.0)  # crop side / the target's longer side, drawn uniformly (inference: 1.4)


class TrainItem(NamedTuple):
    """One training sample as the sources give it."""

    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W bool
    expression: str  # "" = none (clicks-only annotations, zoomed crops)
    # a zoomed crop (`random_zoom`): zoom-in answers a crop only with a previous mask, so the crop's answer to its
    # first prompt alone is not supervised (it would teach the first click on a full image that objects fill it)
    zoomed: bool = False


def random_zoom(image: np.ndarray, mask: np.ndarray, expression: str, rng: np.random.Generator, frac: float
                ) -> TrainItem:
    """With chance `frac`, a sample whose target is small (longer box side at most `ZOOM_MAX_OBJECT` of the
    image's longer side) becomes a square crop that holds the whole target: side `ZOOM_TRAIN_EXPAND` x the target's,
    at least `ZOOM_MIN_CROP`, at a random offset. The expression is dropped: it describes the whole scene, and a
    zoomed click is answered without it. Other samples come back unchanged, and with `frac` 0 or a target too
    large nothing is drawn from `rng` (the stream of a run without zoom stays what it was)."""
    h, w = mask.shape
    if frac <= 0 or not mask.any():
        return TrainItem(image, mask, expression)
    x0, y0, x1, y1 = bounding_box(mask)
    target_side = longest_side(mask)
    if target_side > ZOOM_MAX_OBJECT * max(h, w) or rng.random() >= frac:
        return TrainItem(image, mask, expression)
    side = int(round(max(target_side * rng.uniform(*ZOOM_TRAIN_EXPAND), ZOOM_MIN_CROP * max(h, w))))
    side = min(side, h, w)
    # any offset that keeps the target inside the crop and the crop inside the image
    cx = int(rng.integers(max(0, x1 + 1 - side), min(x0, w - side) + 1))
    cy = int(rng.integers(max(0, y1 + 1 - side), min(y0, h - side) + 1))
    crop = (slice(cy, cy + side), slice(cx, cx + side))
    return TrainItem(np.ascontiguousarray(image[crop]), np.ascontiguousarray(mask[crop]), "", zoomed=True)
