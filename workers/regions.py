"""A predicted mask as a Label Studio prediction: brush RLE (BrushLabels) or traced polygons (PolygonLabels)."""
from __future__ import annotations

import uuid
from typing import List

import numpy as np

from backend.brush import brush_region
from backend.labelconfig import ProjectConfig

MAX_POLYGON_POINTS = 256  # per polygon; denser outlines are thinned evenly (editable in LS, lossy)
MIN_POLYGON_AREA_PX = 4.0


def prediction(mask: np.ndarray, score: float, cfg: ProjectConfig, version: str) -> dict:
    """`{"result": [...], "score": s, "model_version": v}`; an empty mask gives no region."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        regions: List[dict] = []
    elif cfg.output == "polygon":
        regions = polygon_regions(mask, cfg)
    else:
        regions = [brush_region(mask, from_name=cfg.from_name, to_name=cfg.image_name, label=cfg.label)]
    score = float(score)
    for r in regions:
        r["score"] = score
    return {"result": regions, "score": score, "model_version": version}


def polygon_regions(mask: np.ndarray, cfg: ProjectConfig) -> List[dict]:
    """Outer outlines of the mask's connected parts as polygonlabels regions (percent coordinates; holes are
    not representable in one LS polygon and are dropped)."""
    import contourpy  # matplotlib's contouring library, already installed with it

    h, w = mask.shape
    z = np.zeros((h + 2, w + 2), dtype=np.float32)  # a zero border closes every outline
    z[1:-1, 1:-1] = mask
    lines = contourpy.contour_generator(z=z, line_type="Separate").lines(0.5)
    outlines = [(pts, _signed_area(pts)) for pts in lines if len(pts) >= 4]
    outlines = [(p, a) for p, a in outlines if abs(a) >= MIN_POLYGON_AREA_PX]
    if not outlines:
        return []
    outer_sign = np.sign(max(outlines, key=lambda pa: abs(pa[1]))[1])  # the largest outline is an outer one
    regions = []
    for pts, area in outlines:
        if np.sign(area) != outer_sign:
            continue  # a hole
        pts = pts[:-1] if np.allclose(pts[0], pts[-1]) else pts
        if len(pts) > MAX_POLYGON_POINTS:
            pts = pts[np.linspace(0, len(pts) - 1, MAX_POLYGON_POINTS).round().astype(int)]
        # grid index (x, y) in the padded array = pixel centre (x - 1, y - 1); LS wants % of the image size
        xs = np.clip((pts[:, 0] - 0.5) / w * 100.0, 0.0, 100.0)
        ys = np.clip((pts[:, 1] - 0.5) / h * 100.0, 0.0, 100.0)
        regions.append({
            "id": uuid.uuid4().hex[:10], "from_name": cfg.from_name, "to_name": cfg.image_name,
            "type": "polygonlabels", "original_width": int(w), "original_height": int(h), "image_rotation": 0,
            "value": {"points": [[round(float(x), 3), round(float(y), 3)] for x, y in zip(xs, ys)],
                      "closed": True, "polygonlabels": [cfg.label]},
        })
    return regions


def _signed_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
