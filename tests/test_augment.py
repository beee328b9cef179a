"""Flip augmentation (refseg_model.data.augment): the image, the mask and the expression's spatial words flip
together; "over"/"under" (height above the ground in aerial text) are never rewritten. Zoom augmentation crops
around a small target and drops the expression."""
from __future__ import annotations

import numpy as np
import pytest

from refseg_model.data.augment import ZOOM_TRAIN_EXPAND, flip_expression, random_flip, random_zoom


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


def _coded_image(h: int, w: int) -> np.ndarray:
    """Every pixel says where it is (row, column), so a crop's offset can be read back from its first pixel."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def test_random_zoom_crops_a_square_around_a_small_target_and_drops_the_expression():
    image, mask = _coded_image(128, 128), np.zeros((128, 128), bool)
    mask[70:90, 20:44] = True  # 20 x 24 px: at most 3/16 of the side
    offsets, sides = set(), set()
    for seed in range(40):
        img, m, expr, zoomed = random_zoom(image, mask, "the small car left of the road", np.random.default_rng(seed),
                                           1.0)
        side = m.shape[0]
        assert zoomed and expr == "" and m.shape == (side, side) and img.shape == (side, side, 3)
        # expand x the target's 24 px, at least the minimum crop (40 px of 128)
        assert max(40, int(24 * ZOOM_TRAIN_EXPAND[0])) <= side <= round(24 * ZOOM_TRAIN_EXPAND[1])
        assert m.sum() == mask.sum()  # the whole target is inside
        y0, x0 = int(img[0, 0, 0]), int(img[0, 0, 1])
        assert np.array_equal(img, image[y0:y0 + side, x0:x0 + side]) and np.array_equal(m, mask[y0:y0 + side,
                                                                                               x0:x0 + side])
        offsets.add((y0, x0))
        sides.add(side)
    assert len(offsets) > 10 and len(sides) > 3  # random offsets (not always centred) and sides


def test_random_zoom_leaves_large_targets_and_frac_0_alone_without_drawing():
    image, mask = _coded_image(128, 128), np.zeros((128, 128), bool)
    mask[10:50, 10:40] = True  # 40 px: larger than 3/16 of the side
    small = np.zeros_like(mask)
    small[5:9, 5:9] = True
    for m, frac in ((mask, 1.0), (small, 0.0), (np.zeros_like(mask), 1.0)):
        rng = np.random.default_rng(0)
        state = dict(rng.bit_generator.state)
        img, out, expr, zoomed = random_zoom(image, m, "the roof", rng, frac)
        assert img is image and out is m and expr == "the roof" and not zoomed
        assert rng.bit_generator.state == state  # a run without zoom draws exactly what it did before
    # frac 0.5: some small targets zoom, some do not
    kept = [random_zoom(image, small, "x", np.random.default_rng(s), 0.5)[2] for s in range(40)]
    assert 5 < kept.count("") < 35
