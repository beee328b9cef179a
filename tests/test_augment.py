"""Flip augmentation (refseg_model.data.augment): the image, the mask and the expression's spatial words flip
together; "over"/"under" (height above the ground in aerial text) are never rewritten."""
from __future__ import annotations

import numpy as np
import pytest

from refseg_model.data.augment import flip_expression, random_flip


@pytest.mark.parametrize("horizontal", [True, False])
@pytest.mark.parametrize("text", [
    "the bridge over the river",
    "the cars under the trees",
    "the overpass over the highway, under construction",
    "Over the water: the pier; Under it: boats",
])
def test_flips_leave_over_and_under_alone(text: str, horizontal: bool):
    assert flip_expression(text, horizontal=horizontal) == text


def test_flips_rewrite_the_image_plane_words():
    assert flip_expression("the left car west of the rightmost building", True) == \
        "the right car east of the leftmost building"
    assert flip_expression("the upper tank above the road, north side", False) == \
        "the lower tank below the road, south side"
    assert flip_expression("Top roof over the bottom lane", False) == "Bottom roof over the top lane"
    assert flip_expression("the bridge over the river on the left", True) == "the bridge over the river on the right"
    assert flip_expression("the bridge over the river at the top", False) == "the bridge over the river at the bottom"
    assert flip_expression("overhead leftover", True) == "overhead leftover"  # whole words only


def test_random_flip_moves_image_mask_and_words_together():
    image = np.zeros((4, 6, 3), np.uint8)
    image[0, 0] = 255  # top-left pixel
    mask = np.zeros((4, 6), bool)
    mask[0, 0] = True
    seen = set()
    for seed in range(16):
        img, m, expr = random_flip(image, mask, "the top left car over the road", np.random.default_rng(seed))
        r, c = np.argwhere(m)[0]
        assert img[r, c, 0] == 255 and m.sum() == 1
        vert = "bottom" if r == 3 else "top"
        horiz = "right" if c == 5 else "left"
        assert expr == f"the {vert} {horiz} car over the road"
        seen.add((vert, horiz))
    assert len(seen) == 4  # every combination of flips happened
