"""Geometry of windowed prediction on large scenes: feather weights for merging overlapping windows, bilinear
upsampling of overview values, and the full-resolution regions of interest of a (dilated) overview mask.
Pure numpy; `large_scene` runs the model over what these describe."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

Box = Tuple[int, int, int, int]  # (row0, col0, height, width)


def feather_weights(n: int, ramp: int) -> np.ndarray:
    """Feather weights along one axis: linear from the window edge over `ramp` px, never zero."""
    i = np.arange(n, dtype=np.float32)
    d = np.minimum(i, n - 1 - i) + 0.5
    return np.clip(d / max(1, ramp), 1e-3, 1.0).astype(np.float32)


def bilinear_rows(low: np.ndarray, f: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Full-resolution rows [r0, r1) x cols [c0, c1) of overview values `low` (factor f), bilinear."""
    def axis(a0: int, a1: int, n: int):
        u = np.clip((np.arange(a0, a1, dtype=np.float64) + 0.5) / f - 0.5, 0, n - 1)
        i0 = np.floor(u).astype(np.int64)
        return i0, np.minimum(i0 + 1, n - 1), (u - i0).astype(np.float32)

    y0, y1, ty = axis(r0, r1, low.shape[0])
    x0, x1, tx = axis(c0, c1, low.shape[1])
    top = low[y0][:, x0] * (1 - tx) + low[y0][:, x1] * tx
    bot = low[y1][:, x0] * (1 - tx) + low[y1][:, x1] * tx
    return top * (1 - ty)[:, None] + bot * ty[:, None]


def dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation by a (2k+1) square, by shifted ORs along each axis (separable)."""
    out = mask.copy()
    for axis in (0, 1):
        src = out.copy()
        for s in range(1, k + 1):
            if axis == 0:
                out[s:] |= src[:-s]
                out[:-s] |= src[s:]
            else:
                out[:, s:] |= src[:, :-s]
                out[:, :-s] |= src[:, s:]
    return out


def roi_boxes(gate: np.ndarray, f: int, tile: int, H: int, W: int) -> List[Box]:
    """Full-resolution ROIs of the overview mask `gate` (factor `f`) in an H x W scene: each connected
    component's box scaled up and widened to at least one `tile`, centred on it; overlapping boxes merged."""
    boxes = []
    for r0, c0, h, w in _component_boxes(gate):
        r0, c0, r1, c1 = r0 * f, c0 * f, min(H, (r0 + h) * f), min(W, (c0 + w) * f)
        # at least one window per ROI, centred on it
        if r1 - r0 < tile:
            r0 = max(0, min((r0 + r1) // 2 - tile // 2, H - tile)); r1 = min(H, r0 + tile)  # noqa: E702
        if c1 - c0 < tile:
            c0 = max(0, min((c0 + c1) // 2 - tile // 2, W - tile)); c1 = min(W, c0 + tile)  # noqa: E702
        boxes.append((r0, c0, r1 - r0, c1 - c0))
    return _merge_boxes(boxes)


def _component_boxes(mask: np.ndarray) -> List[Box]:
    """Bounding boxes (row0, col0, h, w) of the 4-connected components of a small bool mask."""
    from formats.mask_polygons import mask_to_polygons

    boxes = []
    for poly in mask_to_polygons(mask):
        ext = poly[0]
        x0, y0 = int(ext[:, 0].min()), int(ext[:, 1].min())
        x1, y1 = int(ext[:, 0].max()), int(ext[:, 1].max())
        boxes.append((y0, x0, y1 - y0, x1 - x0))
    return boxes


def _merge_boxes(boxes: List[Box]) -> List[Box]:
    """Union overlapping boxes until all are disjoint."""
    boxes = list(boxes)
    changed = True
    while changed:
        changed = False
        out: List[Box] = []
        for b in boxes:
            for k, o in enumerate(out):
                if b[0] < o[0] + o[2] and o[0] < b[0] + b[2] and b[1] < o[1] + o[3] and o[1] < b[1] + b[3]:
                    r0, c0 = min(b[0], o[0]), min(b[1], o[1])
                    r1, c1 = max(b[0] + b[2], o[0] + o[2]), max(b[1] + b[3], o[1] + o[3])
                    out[k] = (r0, c0, r1 - r0, c1 - c0)
                    changed = True
                    break
            else:
                out.append(b)
        boxes = out
    return boxes
