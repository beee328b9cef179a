"""Masks <-> Label Studio polygons (PolygonLabels), in percent of the image size.

Outlines are traced along pixel edges by formats.mask_polygons.mask_to_polygons (the tracer the GeoJSON export uses
too), so a polygon drawn back with `polygon_mask` covers the pixels it came from.
"""
from __future__ import annotations

import uuid
from typing import List

import numpy as np

from formats.mask_polygons import mask_to_polygons, polygon_pixel_area

MAX_POLYGON_POINTS = 256  # per polygon; denser outlines are thinned evenly (editable in LS, lossy)
MIN_POLYGON_AREA_PX = 4.0


def polygon_regions(mask: np.ndarray, *, from_name: str, to_name: str, label: str) -> List[dict]:
    """Outer outlines of the mask's connected parts as polygonlabels regions (holes are not representable in one
    LS polygon and are dropped)."""
    h, w = mask.shape
    regions = []
    for poly in mask_to_polygons(mask):
        if polygon_pixel_area(poly[:1]) < MIN_POLYGON_AREA_PX:
            continue
        pts = poly[0][:-1]  # the exterior, without its closing point
        if len(pts) > MAX_POLYGON_POINTS:
            pts = pts[np.linspace(0, len(pts) - 1, MAX_POLYGON_POINTS).round().astype(int)]
        xs = np.clip(pts[:, 0] / w * 100.0, 0.0, 100.0)
        ys = np.clip(pts[:, 1] / h * 100.0, 0.0, 100.0)
        regions.append({
            "id": uuid.uuid4().hex[:10], "from_name": from_name, "to_name": to_name,
            "type": "polygonlabels", "original_width": int(w), "original_height": int(h), "image_rotation": 0,
            "value": {"points": [[round(float(x), 3), round(float(y), 3)] for x, y in zip(xs, ys)],
                      "closed": True, "polygonlabels": [label]},
        })
    return regions


def polygon_mask(points, h: int, w: int) -> np.ndarray:
    """H x W bool mask of a polygon given in percent of the image size (LS's `value.points`)."""
    from PIL import Image, ImageDraw

    img = Image.new("1", (w, h), 0)
    ImageDraw.Draw(img).polygon([(float(x) / 100.0 * w, float(y) / 100.0 * h) for x, y in points], fill=1)
    return np.asarray(img, dtype=bool)
