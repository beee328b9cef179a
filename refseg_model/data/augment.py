"""Geometry augmentation that keeps the expression true: flipping an image flips its spatial words.

A horizontal flip swaps left/right (and west/east), a vertical flip swaps top/bottom, above/below, upper/lower,
north/south. "over" and "under" are left alone: in aerial text they are about height above the ground ("the
bridge over the river", "the cars under the trees"), not a direction in the image plane, so no flip changes them.
Colour words are never touched, so no colour augmentation beyond mild brightness is applied.

The paper's recipe (`refseg train --recipe rsrefseg2`) trains without any augmentation.
"""
from __future__ import annotations

import re
from typing import Dict

import numpy as np

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
