"""Tests of the synthetic scene generator (refseg_model.data.synth)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from formats.datasets.interchange import read_interchange
from formats.datasets.sample import SPLITS
from formats.images import load_image, load_mask
from refseg_model.data.synth import KINDS, STYLES, Scene, SceneGenerator, write_dataset


def _scenes(style: str, n: int, difficulty: float = 1.0, seed: int = 3, size: int = 128) -> list:
    gen = SceneGenerator(size, style, seed)
    return [gen.scene(difficulty) for _ in range(n)]


@pytest.fixture(scope="module", params=STYLES)
def scenes(request) -> list:
    """A mix of difficulties for each style."""
    return _scenes(request.param, 30, 1.0) + _scenes(request.param, 10, 0.5, seed=4) + \
        _scenes(request.param, 10, 0.0, seed=5)


@pytest.mark.parametrize("style", STYLES)
def test_deterministic(style: str) -> None:
    a, b = _scenes(style, 5, seed=11), _scenes(style, 5, seed=11)
    for sa, sb in zip(a, b):
        assert np.array_equal(sa.image, sb.image)
        assert [s.expression for s in sa.samples] == [s.expression for s in sb.samples]
        assert all(np.array_equal(x.mask, y.mask) for x, y in zip(sa.samples, sb.samples))
    c = _scenes(style, 5, seed=12)
    assert any(not np.array_equal(x.image, y.image) for x, y in zip(a, c))


def test_shapes_and_masks(scenes: list) -> None:
    for sc in scenes:
        assert isinstance(sc, Scene)
        assert sc.image.shape == (128, 128, 3) and sc.image.dtype == np.uint8
        assert 1 <= len(sc.samples) <= 3
        union = np.zeros((128, 128), bool)
        for obj in sc.objects:
            assert obj.mask.any() and obj.mask.sum() == obj.area
            if obj.category != "road":
                assert not (union & obj.mask).any(), "objects' visible masks overlap"
                union |= obj.mask
        for obj in sc.objects:  # crossing roads share the crossing; nothing else overlaps a road
            if obj.category == "road":
                assert not (union & obj.mask).any(), "a road mask under another object"
        union |= np.logical_or.reduce([o.mask for o in sc.objects])
        for smp in sc.samples:
            assert smp.kind in KINDS and smp.expression.strip()
            assert smp.mask.shape == (128, 128) and smp.mask.dtype == bool and smp.mask.any()
            expected = np.logical_or.reduce([sc.objects[t].mask for t in smp.targets])
            assert np.array_equal(smp.mask, expected)
            if len(smp.targets) == 1:
                assert smp.mask.sum() < union.sum()
        assert len({s.targets for s in sc.samples}) == len(sc.samples), "two expressions with the same target"


def test_unambiguous(scenes: list) -> None:
    for sc in scenes:
        for smp in sc.samples:
            objs = sc.objects
            tgt = objs[smp.targets[0]]
            same_cat = [o for o in objs if o.category == tgt.category]
            if smp.kind == "category":
                assert len(same_cat) == 1, smp.expression
            elif smp.kind == "colour":
                assert sum(o.colour == tgt.colour for o in same_cat) == 1, smp.expression
                assert tgt.colour in smp.expression
            elif smp.kind == "multi":
                assert len(smp.targets) >= 2, smp.expression
                assert all(objs[t].category == tgt.category for t in smp.targets)
                # the group is either the whole category or everything of one colour in it
                group = {i for i, o in enumerate(objs) if o.category == tgt.category}
                if set(smp.targets) != group:
                    assert {i for i in group if objs[i].colour == tgt.colour} == set(smp.targets)
                    assert tgt.colour in smp.expression
            elif smp.kind == "size":
                others = sorted(o.area for o in same_cat if o is not tgt)
                assert others and (tgt.area >= 1.5 * others[-1] or 1.5 * tgt.area <= others[0]), smp.expression
            else:
                assert len(smp.targets) == 1


def test_difficulty_curriculum() -> None:
    easy = _scenes("default", 40, 0.0, seed=21)
    assert all(len(sc.objects) <= 3 for sc in easy)
    assert {s.kind for sc in easy for s in sc.samples} <= {"category", "colour"}
    hard = _scenes("default", 60, 1.0, seed=22)
    assert {s.kind for sc in hard for s in sc.samples} == set(KINDS)
    assert max(len(sc.objects) for sc in hard) >= 7


def test_other_size() -> None:
    sc = SceneGenerator(256, "shifted", 0).scene()
    assert sc.image.shape == (256, 256, 3)
    assert all(s.mask.shape == (256, 256) and s.mask.any() for s in sc.samples)


def _vocab(style: str) -> set:
    return {w for sc in _scenes(style, 200, seed=31) for s in sc.samples
            for w in re.findall(r"[a-z]+", s.expression.lower())}


def test_shifted_vocabulary_is_new() -> None:
    default, shifted = _vocab("default"), _vocab("shifted")
    new = shifted - default
    assert new & {"north", "south", "east", "west", "segment", "find", "orange", "purple", "teal"}
    assert new & {"solar", "pool", "airplane", "aircraft", "plane"}


def test_write_dataset(tmp_path) -> None:
    n = write_dataset(tmp_path / "ds", 12, size=96, seed=5, expressions_per_image=2, progress=False)
    samples = read_interchange(tmp_path / "ds")
    assert n == len(samples) and 12 <= n <= 24
    split_of = {}
    for smp in samples:
        assert split_of.setdefault(smp.image, smp.split) == smp.split, "image in two splits"
        mask = load_mask(smp.mask)
        assert mask.shape == (96, 96) and mask.any()
        assert smp.mask.name.startswith(smp.image.stem + "_")
    assert len(split_of) == 12 and set(split_of.values()) == set(SPLITS)
    assert load_image(next(iter(split_of))).shape == (96, 96, 3)
    # deterministic
    write_dataset(tmp_path / "ds2", 12, size=96, seed=5, expressions_per_image=2, progress=False)
    again = read_interchange(tmp_path / "ds2")
    assert [(s.expression, s.split) for s in again] == [(s.expression, s.split) for s in samples]
    assert np.array_equal(load_image(again[0].image), load_image(samples[0].image))


_SIDE = {"left": (0, min), "west": (0, min), "right": (0, max), "east": (0, max),
         "top": (1, min), "north": (1, min), "bottom": (1, max), "south": (1, max)}


def test_position_words_match_geometry(scenes: list) -> None:
    """A side expression ("on the left") names a side on which its target is the extreme object of its category;
    a corner expression ("in the top left") a quadrant that holds no other object of the category."""
    for sc in scenes:
        for smp in sc.samples:
            tgt = sc.objects[smp.targets[0]]
            if smp.kind != "position" or tgt.category == "road":
                continue
            others = [o.centroid for o in sc.objects if o.category == tgt.category and o is not tgt]
            sides = [_SIDE[w] for w in re.findall(r"[a-z]+", smp.expression) if w in _SIDE]
            if len(sides) == 1:
                axis, pick = sides[0]
                assert tgt.centroid[axis] == pick([tgt.centroid[axis]] + [c[axis] for c in others]), smp.expression
            elif len(sides) == 2:
                half = 64  # image centre at size 128

                def quadrant(c):
                    return tuple((c[axis] < half) == (pick is min) for axis, pick in sides)

                assert quadrant(tgt.centroid) == (True, True), smp.expression
                assert all(quadrant(c) != (True, True) for c in others), smp.expression
