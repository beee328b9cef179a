"""labelstudio.polygons: masks traced to PolygonLabels regions (the GeoJSON export's tracer) and drawn back."""
from __future__ import annotations

import numpy as np

from labelstudio.polygons import MAX_POLYGON_POINTS, polygon_mask, polygon_regions


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_polygons_round_trip_to_the_mask():
    mask = np.zeros((60, 80), bool)
    mask[10:30, 5:25] = True  # a square
    mask[40:55, 40:75] = True  # a rectangle
    mask[45:50, 50:55] = False  # a hole: not representable in one LS polygon, filled on the way back
    regions = polygon_regions(mask, from_name="mask", to_name="image", label="target")
    assert len(regions) == 2 and all(r["type"] == "polygonlabels" for r in regions)
    assert all(r["original_width"] == 80 and r["original_height"] == 60 for r in regions)
    back = np.zeros_like(mask)
    for r in regions:
        pts = r["value"]["points"]
        assert all(0.0 <= x <= 100.0 and 0.0 <= y <= 100.0 for x, y in pts)
        back |= polygon_mask(pts, 60, 80)
    filled = mask.copy()
    filled[45:50, 50:55] = True
    assert _iou(back, filled) > 0.9


def test_specks_are_dropped_and_dense_outlines_thinned():
    mask = np.zeros((200, 200), bool)
    mask[5, 5] = True  # one pixel: below the minimum area
    yy, xx = np.mgrid[:200, :200]
    mask |= (yy - 120) ** 2 + (xx - 110) ** 2 < 70 ** 2  # a disc with a long staircase outline
    regions = polygon_regions(mask, from_name="m", to_name="i", label="x")
    assert len(regions) == 1
    assert len(regions[0]["value"]["points"]) <= MAX_POLYGON_POINTS
    assert _iou(polygon_mask(regions[0]["value"]["points"], 200, 200), mask) > 0.97
