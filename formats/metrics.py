"""Referring-segmentation metrics: gIoU (= mIoU), cIoU (= oIoU) and Pr@X.

Per sample i (one image-expression pair) with binary prediction P_i and ground truth G_i (H x W each):

    I_i = |P_i ∩ G_i|,  U_i = |P_i ∪ G_i|,  IoU_i = I_i / U_i

* **gIoU = mIoU** (RSRefSeg naming / LAVT-RMSIN naming): the mean per-sample IoU, (1/N) sum_i IoU_i.
* **cIoU = oIoU** (cumulative / overall IoU): pixel-pooled over the split, sum_i I_i / sum_i U_i.
  Dominated by large objects.
* **Pr@X** for X in (0.5, 0.6, 0.7, 0.8, 0.9): the fraction of samples with IoU_i >= X (LAVT/RMSIN/LGCE
  convention; RSRefSeg 2 uses strict `>`, a negligible difference). `compute` returns fractions in [0, 1];
  `format_table` prints percentages.

Empty-target rule (documented choice; the public code bases differ, see docs/model.md section 5):

* empty GT and empty prediction (U_i = 0): IoU_i = 1.0, and the sample contributes I = 0, U = 0 to cIoU
  (so it does not change cIoU at all);
* empty GT and non-empty prediction: IoU_i = 0.0 (I = 0 < U), as the formula gives.

If every sample of a split has U_i = 0, cIoU is defined as 1.0 (consistent with the rule above). With no samples at
all (N = 0) every metric is NaN.

Sums of IoU use `math.fsum` (correctly rounded), so the result does not depend on the order in which samples were
added or accumulators merged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

DEFAULT_THRESHOLDS: Tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


def _as_mask(arr: Any, name: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H x W mask, got shape {a.shape}")
    return a if a.dtype == bool else a != 0


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> Tuple[int, int]:
    """Pixel counts of the intersection and the union of two masks.

    Args:
        pred: H x W mask, bool (other dtypes: non-zero = target).
        gt: H x W mask of the same shape.

    Returns:
        (I, U) as Python ints.

    Raises:
        ValueError: if either array is not 2-D or the shapes differ.
    """
    p, g = _as_mask(pred, "pred"), _as_mask(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def iou_from_counts(inter: int, union: int) -> float:
    """IoU from counts with the empty rule: U = 0 (both masks empty) gives 1.0."""
    if inter < 0 or union < 0 or inter > union:
        raise ValueError(f"invalid counts: intersection {inter}, union {union}")
    return 1.0 if union == 0 else inter / union


def sample_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of one H x W prediction against its H x W ground truth.

    Empty GT and empty prediction gives 1.0; empty GT with a non-empty prediction gives 0.0.
    """
    return iou_from_counts(*intersection_union(pred, gt))


@dataclass
class RefSegMetrics:
    """Accumulator of the RRSIS metrics over a split.

    Keeps the per-sample IoUs (for gIoU and Pr@X, and for per-sample analysis) and the total I and U (for cIoU).
    """

    thresholds: Tuple[float, ...] = DEFAULT_THRESHOLDS
    ious: List[float] = field(default_factory=list)
    total_inter: int = 0
    total_union: int = 0

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(t) for t in self.thresholds)
        if any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must lie in [0, 1], got {self.thresholds}")

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one sample (H x W prediction and GT); returns its IoU."""
        inter, union = intersection_union(pred, gt)
        iou = iou_from_counts(inter, union)
        self.add_counts(inter, union, iou)
        return iou

    def add_counts(self, inter: int, union: int, iou: float) -> None:
        """Add one sample from its counts (e.g. after refseg_model.evaluate.batch_intersection_union or a distributed gather)."""
        inter, union, iou = int(inter), int(union), float(iou)
        if inter < 0 or union < 0 or inter > union:
            raise ValueError(f"invalid counts: intersection {inter}, union {union}")
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f"IoU must lie in [0, 1], got {iou}")
        self.ious.append(iou)
        self.total_inter += inter
        self.total_union += union

    def merge(self, other: "RefSegMetrics") -> None:
        """Fold another accumulator (same thresholds) into this one."""
        if tuple(other.thresholds) != tuple(self.thresholds):
            raise ValueError(f"cannot merge metrics with thresholds {other.thresholds} into {self.thresholds}")
        self.ious.extend(other.ious)
        self.total_inter += other.total_inter
        self.total_union += other.total_union

    def __len__(self) -> int:
        return len(self.ious)

    def compute(self) -> Dict[str, float]:
        """The metrics: {"n": N, "gIoU": .., "cIoU": .., "Pr@0.5": .., ..., "Pr@0.9": ..}.

        gIoU, cIoU and Pr@X are fractions in [0, 1]; all NaN when N = 0.
        """
        n = len(self.ious)
        out: Dict[str, float] = {"n": n}
        if n == 0:
            out["gIoU"] = out["cIoU"] = math.nan
            for t in self.thresholds:
                out[threshold_key(t)] = math.nan
            return out
        out["gIoU"] = math.fsum(self.ious) / n
        out["cIoU"] = 1.0 if self.total_union == 0 else self.total_inter / self.total_union
        for t in self.thresholds:
            out[threshold_key(t)] = sum(1 for v in self.ious if v >= t) / n
        return out

    def state(self) -> Dict[str, Any]:
        """A JSON-able snapshot (thresholds, per-sample IoUs, total I and U)."""
        return {
            "thresholds": list(self.thresholds),
            "ious": list(self.ious),
            "total_inter": self.total_inter,
            "total_union": self.total_union,
        }

    @classmethod
    def from_state(cls, d: Dict[str, Any]) -> "RefSegMetrics":
        """Inverse of `state`."""
        try:
            m = cls(thresholds=tuple(d["thresholds"]))
            ious = [float(v) for v in d["ious"]]
            inter, union = int(d["total_inter"]), int(d["total_union"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a RefSegMetrics state: {exc}") from exc
        if any(not 0.0 <= v <= 1.0 for v in ious) or inter < 0 or union < 0 or inter > union:
            raise ValueError("not a RefSegMetrics state: values out of range")
        m.ious, m.total_inter, m.total_union = ious, inter, union
        return m


def threshold_key(t: float) -> str:
    """The result key of a precision threshold: 0.5 -> "Pr@0.5"."""
    return f"Pr@{t:g}"


def format_table(results: Dict[str, float], title: str = "") -> str:
    """A plain-text table of a `compute()` result: gIoU, cIoU and Pr@X as percentages (2 decimals), plus N.

    Example::

        RRSIS-D test
            N   gIoU   cIoU  Pr@0.5  Pr@0.6  Pr@0.7  Pr@0.8  Pr@0.9
         3481  64.20  77.79   73.12   ...
    """
    pr_keys = sorted((k for k in results if k.startswith("Pr@")), key=lambda k: float(k[3:]))
    cols = ["N", "gIoU", "cIoU", *pr_keys]
    cells = [str(int(results["n"])) if "n" in results else "-"]
    for k in cols[1:]:
        v = results.get(k)
        cells.append("-" if v is None else ("nan" if math.isnan(v) else f"{100.0 * v:.2f}"))
    widths = [max(len(c), len(v)) for c, v in zip(cols, cells)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    lines.append("  ".join(v.rjust(w) for v, w in zip(cells, widths)))
    return "\n".join(lines)
