"""Visible masks and geometry of the placed objects, read from a drawn scene's owner map."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .canvas import Built
from .scene import SceneObject


def visible_objects(built: Built, size: int) -> Tuple[List[SceneObject], List[str]]:
    """Visible masks and geometry of the placed objects (objects with no visible pixel are dropped), and each
    kept object's orientation ("h" | "v" for roads, else "")."""
    S, om, ar = size, built.owner_map, np.arange(size, dtype=np.float64)
    roads = {i for i, p in enumerate(built.placed) if p.cat == "road"}
    if roads:
        owner = np.asarray(built.canvas.owner)
        covers_road = np.array([o >= 0 and o not in roads for o in owner])[built.lab]
    objects, orients = [], []
    for i, p in enumerate(built.placed):
        x0, y0, x1, y1 = p.box
        local = ~covers_road[y0:y1, x0:x1] if i in roads else om[y0:y1, x0:x1] == i
        cc, rc = local.sum(0), local.sum(1)
        area = int(cc.sum())
        if area == 0:
            continue
        xs, ys = np.nonzero(cc)[0], np.nonzero(rc)[0]
        mask = np.zeros((S, S), bool)
        mask[y0:y1, x0:x1] = local
        centroid = (float(cc @ ar[x0:x1]) / area + 0.5, float(rc @ ar[y0:y1]) / area + 0.5)
        box = (x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)
        objects.append(SceneObject(p.cat, p.colour, mask, box, centroid, area))
        orients.append(p.orient)
    return objects, orients
