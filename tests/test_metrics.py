"""Tests of formats.metrics against hand-made cases and an independent pure-Python computation."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from formats.metrics import (
    RefSegMetrics,
    format_table,
    intersection_union,
    sample_iou,
)
from refseg_model.evaluate import batch_intersection_union


def _pixels(mask: np.ndarray) -> set:
    """The set of (row, col) target pixels, computed without numpy set operations."""
    return {(r, c) for r, row in enumerate(mask.tolist()) for c, v in enumerate(row) if v}


def _reference(masks):
    """Independent reference: per-sample IoU from coordinate sets, exact Fractions for the aggregates."""
    ious, inter_sum, union_sum = [], 0, 0
    for pred, gt in masks:
        p, g = _pixels(pred), _pixels(gt)
        i, u = len(p & g), len(p | g)
        ious.append(Fraction(1) if u == 0 else Fraction(i, u))
        inter_sum += i
        union_sum += u
    n = len(ious)
    out = {"n": n, "gIoU": sum(ious) / n, "cIoU": Fraction(1) if union_sum == 0 else Fraction(inter_sum, union_sum)}
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        out[f"Pr@{t}"] = Fraction(sum(1 for v in ious if v >= Fraction(str(t))), n)
    return out, ious


def _mask(rows):
    return np.array([[c == "#" for c in r] for r in rows], dtype=bool)


# Two 4x4 masks: pred covers the left half (8 px), gt the top half (8 px); they overlap in the top-left
# 2x2 quadrant (4 px). Union = 8 + 8 - 4 = 12, IoU = 4/12 = 1/3.
PRED_4 = _mask(["##..", "##..", "##..", "##.."])
GT_4 = _mask(["####", "####", "....", "...."])


def test_hand_made_4x4():
    assert intersection_union(PRED_4, GT_4) == (4, 12)
    assert sample_iou(PRED_4, GT_4) == pytest.approx(1 / 3)
    assert sample_iou(GT_4, GT_4) == 1.0
    assert sample_iou(PRED_4, ~PRED_4) == 0.0


def test_accepts_uint8_masks_non_zero_is_target():
    assert intersection_union(PRED_4.astype(np.uint8) * 255, GT_4.astype(np.uint8)) == (4, 12)


@pytest.mark.parametrize("pred,gt", [
    (np.zeros((4, 4), bool), np.zeros((4, 5), bool)),
    (np.zeros((4, 4), bool), np.zeros((1, 4, 4), bool)),
    (np.zeros(16, bool), np.zeros(16, bool)),
])
def test_shape_errors(pred, gt):
    with pytest.raises(ValueError):
        intersection_union(pred, gt)


def test_empty_rule():
    empty = np.zeros((4, 4), bool)
    assert sample_iou(empty, empty) == 1.0  # empty GT + empty prediction: a correct "no target" answer
    assert sample_iou(PRED_4, empty) == 0.0  # empty GT, something predicted
    assert sample_iou(empty, GT_4) == 0.0  # nothing predicted for a real target
    m = RefSegMetrics()
    m.add(empty, empty)
    m.add(PRED_4, GT_4)
    r = m.compute()
    # the empty-empty sample adds I = 0, U = 0: cIoU is that of the other sample alone
    assert r["cIoU"] == pytest.approx(4 / 12)
    assert r["gIoU"] == pytest.approx((1 + 1 / 3) / 2)
    assert r["Pr@0.5"] == 0.5
    only_empty = RefSegMetrics()
    only_empty.add(empty, empty)
    assert only_empty.compute()["cIoU"] == 1.0


def test_no_samples_is_nan():
    r = RefSegMetrics().compute()
    assert r["n"] == 0 and math.isnan(r["gIoU"]) and math.isnan(r["cIoU"]) and math.isnan(r["Pr@0.9"])


def test_threshold_boundary_counts():
    """IoU exactly equal to a threshold counts (>=), for every threshold."""
    m = RefSegMetrics()
    # IoU = 1/2, 3/5, 7/10, 4/5, 9/10 exactly, built as 1 x U masks
    for i, u in [(1, 2), (3, 5), (7, 10), (4, 5), (9, 10)]:
        gt = np.zeros((1, u), bool)
        gt[0, :] = True
        pred = np.zeros((1, u), bool)
        pred[0, :i] = True
        assert m.add(pred, gt) == i / u
    r = m.compute()
    assert r["Pr@0.5"] == 1.0
    assert r["Pr@0.6"] == 4 / 5
    assert r["Pr@0.7"] == 3 / 5
    assert r["Pr@0.8"] == 2 / 5
    assert r["Pr@0.9"] == 1 / 5
    # just below 0.5 does not count
    m2 = RefSegMetrics()
    m2.add_counts(499, 1000, 499 / 1000)
    assert m2.compute()["Pr@0.5"] == 0.0


def _random_pairs(rng, n, shape=(6, 7)):
    return [(rng.random(shape) < rng.random(), rng.random(shape) < rng.random()) for _ in range(n)]


def test_matches_independent_reference():
    rng = np.random.default_rng(0)
    pairs = _random_pairs(rng, 40)
    pairs.append((np.zeros((6, 7), bool), np.zeros((6, 7), bool)))
    m = RefSegMetrics()
    for p, g in pairs:
        m.add(p, g)
    ref, ref_ious = _reference(pairs)
    r = m.compute()
    assert r["n"] == ref["n"]
    for k in ("gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"):
        assert r[k] == pytest.approx(float(ref[k]), abs=1e-12), k
    assert m.ious == pytest.approx([float(v) for v in ref_ious])


def test_merge_equals_single_accumulator_and_state_round_trip():
    rng = np.random.default_rng(1)
    pairs = _random_pairs(rng, 30)
    whole = RefSegMetrics()
    parts = [RefSegMetrics() for _ in range(3)]
    for k, (p, g) in enumerate(pairs):
        whole.add(p, g)
        parts[k % 3].add(p, g)
    merged = RefSegMetrics()
    for part in reversed(parts):
        merged.merge(part)
    assert merged.compute() == whole.compute()  # exact: fsum is order-independent
    restored = RefSegMetrics.from_state(json.loads(json.dumps(whole.state())))
    assert restored.compute() == whole.compute()
    with pytest.raises(ValueError):
        merged.merge(RefSegMetrics(thresholds=(0.5,)))


def test_add_counts_validation():
    m = RefSegMetrics()
    with pytest.raises(ValueError):
        m.add_counts(5, 4, 1.0)
    with pytest.raises(ValueError):
        m.add_counts(1, 2, 1.5)
    with pytest.raises(ValueError):
        RefSegMetrics.from_state({"thresholds": [0.5]})


def test_batch_intersection_union_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    pred = rng.random((5, 8, 9)) < 0.4
    gt = rng.random((5, 8, 9)) < 0.5
    gt[0] = False
    pred[0] = False
    inter, union = batch_intersection_union(torch.from_numpy(pred), torch.from_numpy(gt))
    assert inter.dtype == torch.int64 and inter.shape == (5,)
    for b in range(5):
        assert (int(inter[b]), int(union[b])) == intersection_union(pred[b], gt[b])
    # uint8 inputs: non-zero = target
    i2, u2 = batch_intersection_union(torch.from_numpy(pred.astype(np.uint8) * 255), torch.from_numpy(gt))
    assert torch.equal(i2, inter) and torch.equal(u2, union)
    with pytest.raises(ValueError):
        batch_intersection_union(torch.from_numpy(pred[0]), torch.from_numpy(gt[0]))


def test_format_table():
    m = RefSegMetrics()
    m.add(PRED_4, GT_4)
    m.add(GT_4, GT_4)
    text = format_table(m.compute(), title="toy val")
    lines = text.splitlines()
    assert lines[0] == "toy val"
    assert lines[1].split() == ["N", "gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    # gIoU = (1/3 + 1)/2 = 66.67 %, cIoU = (4 + 8) / (12 + 8) = 60.00 %
    assert lines[2].split() == ["2", "66.67", "60.00", "50.00", "50.00", "50.00", "50.00", "50.00"]


masks_2 = st.integers(1, 6).flatmap(
    lambda h: st.integers(1, 6).flatmap(
        lambda w: st.tuples(
            st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(lambda v: np.array(v).reshape(h, w)),
            st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(lambda v: np.array(v).reshape(h, w)),
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(st.lists(masks_2, min_size=1, max_size=6))
def test_property_random_masks(pairs):
    m = RefSegMetrics()
    ious, unions = [], []
    for p, g in pairs:
        iou = m.add(p, g)
        assert 0.0 <= iou <= 1.0
        assert iou == sample_iou(g, p)  # symmetric in pred / gt
        assert iou == float(_reference([(p, g)])[1][0])
        ious.append(iou)
        unions.append(intersection_union(p, g)[1])
    r = m.compute()
    assert 0.0 <= r["gIoU"] <= 1.0 and 0.0 <= r["cIoU"] <= 1.0
    if all(u > 0 for u in unions):
        # cIoU is a union-weighted mean of the per-sample IoUs
        assert min(ious) - 1e-12 <= r["cIoU"] <= max(ious) + 1e-12
    prs = [r[f"Pr@{t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert prs == sorted(prs, reverse=True)
