"""Scene layout: where everything goes, drawn onto a `Canvas`.

Roads (axis-aligned bands crossing the whole image, at most one horizontal and one vertical) come first, then
fields (large jittered quads, may run off the image), then compact objects (buildings, vehicles, tanks, ...) by
rejection sampling against boolean occupancy grids, so that objects never overlap each other. Vehicles alone may
stand on roads, which is why masks are *visible* masks (a road mask has holes under cars). Trees (background
clutter, never targets) fill free space last.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np

from .canvas import Built, Canvas, Placed
from .shapes import BUILDERS, Layer, rect
from .styles import CATEGORIES, GROUNDS, PALETTES, PLACE_ORDER, RGB, ROAD_MARK


class SceneLayout:
    """Lays out and draws scenes of one style and size, drawing every random choice from the shared `rng`."""

    def __init__(self, rng: np.random.Generator, size: int, style: str):
        self.rng, self.size, self.style = rng, size, style
        self._s = self.size / 128.0
        self._pal, self._cats = PALETTES[style], CATEGORIES[style]

    def _colour(self, cat: str) -> Tuple[str, np.ndarray]:
        names = list(self._pal[cat])
        name = names[int(self.rng.integers(len(names)))]
        base = np.asarray(self._pal[cat][name], np.float64)
        return name, np.clip(base * self.rng.uniform(0.93, 1.06) + self.rng.normal(0, 4, 3), 0, 255)

    def build(self, d: float) -> Built:
        """Place and draw roads, fields, compact objects and trees for difficulty `d`; fills `lab` and `owner_map`."""
        rng, S, s = self.rng, self.size, self._s
        ground_name = list(GROUNDS[self.style])[int(rng.integers(len(GROUNDS[self.style])))]
        ground, tree_rgb, tree_n = GROUNDS[self.style][ground_name]
        built = Built(Canvas(S), [], np.asarray(ground, np.float64) + rng.normal(0, 5, 3), [])
        occ, road_occ = np.zeros((S, S), bool), np.zeros((S, S), bool)
        n_total = int(rng.integers(round(2 + 2 * d), round(3 + 7 * d) + 1))
        ang = math.pi / 4 + math.pi / 2 * int(rng.integers(4)) + rng.uniform(-0.3, 0.3)
        sun = np.array([math.cos(ang), math.sin(ang)]) * rng.uniform(2.0, 3.5) * s

        n_roads = 0
        if rng.random() < 0.25 + 0.35 * d:
            n_roads = 2 if (n_total >= 4 and rng.random() < 0.4 * d) else 1
        orients = ["h", "v"] if n_roads == 2 else [("h", "v")[int(rng.integers(2))]] * n_roads
        bands = self._roads(built, orients, road_occ)
        n_fields = min(int(rng.random() < 0.45) + int(d > 0.4 and rng.random() < 0.3), max(0, n_total - n_roads - 1))
        for _ in range(n_fields):
            self._field(built, occ, road_occ)

        n_obj = max(1, n_total - n_roads - n_fields)
        names = list(self._cats)
        weights = np.array([self._cats[c][0] for c in names])
        k = min(len(names), int(rng.integers(1, 2 + round(3 * d))))
        active = [names[i] for i in rng.choice(len(names), size=k, replace=False, p=weights / weights.sum())]
        counts: Dict[str, int] = {}
        for _ in range(n_obj):
            c = active[int(rng.integers(k))]
            counts[c] = min(counts.get(c, 0) + 1, self._cats[c][1])
        for cat in sorted(counts, key=PLACE_ORDER.__getitem__):
            for _ in range(counts[cat]):
                self._place(built, cat, occ, road_occ, bands, sun)
        self._trees(built, occ | road_occ, tree_rgb, tree_n, sun)

        built.lab = np.asarray(built.canvas.lab)
        built.owner_map = np.asarray(built.canvas.owner, np.int16)[built.lab]
        return built

    def _roads(self, built: Built, orients: List[str], road_occ: np.ndarray) -> List[Tuple[str, int, int]]:
        """Axis-aligned road bands with edge lines and a dashed centre line; returns (orient, lo, hi) bands."""
        rng, S, s, cv = self.rng, self.size, self._s, built.canvas
        bands = []
        for o in orients:
            w, c = rng.uniform(8, 13) * s, rng.uniform(0.2, 0.8) * S
            lo, hi = int(round(c - w / 2)), int(round(c + w / 2))
            name, base = self._colour("road")
            oid = len(built.placed)
            body = cv.part(base, oid)
            box = (0, lo, S, hi) if o == "h" else (lo, 0, hi, S)
            cv.dl.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=body)
            road_occ[box[1]:box[3], box[0]:box[2]] = True
            built.placed.append(Placed("road", name, box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), orient=o))
            bands.append((o, lo, hi, oid, base))
        for o, lo, hi, oid, base in bands:  # markings after all bodies, interrupted at crossings
            segs = _free_segments(S, [(b[1], b[2]) for b in bands if b[0] != o])
            mark, period = cv.part(np.asarray(ROAD_MARK[self.style], float), oid), rng.uniform(8, 12) * s
            lines = [((lo + hi - 1) / 2, mark)]
            if rng.random() < 0.5:
                edge = cv.part(np.clip(base * 1.45, 0, 255), oid)
                lines += [(lo + 1, edge), (hi - 2, edge)]
            for a, b in segs:
                for pos, idx in lines:
                    dashes = ([(a, b)] if idx != mark else
                              [(t, min(t + period / 2, b)) for t in np.arange(a + rng.uniform(0, period), b, period)])
                    for t0, t1 in dashes:
                        xy = [t0, pos, t1 - 1, pos] if o == "h" else [pos, t0, pos, t1 - 1]
                        cv.dl.line(xy, fill=idx, width=cv.lw)
        return [(o, lo, hi) for o, lo, hi, _, _ in bands]

    def _field(self, built: Built, occ: np.ndarray, road_occ: np.ndarray) -> None:
        rng, S, s = self.rng, self.size, self._s
        pts = rect(rng.uniform(30, 56) * s, rng.uniform(24, 46) * s) + rng.uniform(-4, 4, (4, 2)) * s
        angle = 0.0 if rng.random() < 0.5 else rng.uniform(-0.35, 0.35)
        c, si = math.cos(angle), math.sin(angle)
        pts = pts @ np.array([[c, si], [-si, c]])
        lo, hi = pts.min(0), pts.max(0)
        m = 2 * s
        for _ in range(20):
            cx, cy = rng.uniform(-lo * 0.5, S - hi * 0.5)
            x0, y0 = max(0, int(cx + lo[0] - m)), max(0, int(cy + lo[1] - m))
            x1, y1 = min(S, int(cx + hi[0] + m) + 1), min(S, int(cy + hi[1] + m) + 1)
            if occ[y0:y1, x0:x1].any() or road_occ[y0:y1, x0:x1].any():
                continue
            occ[y0:y1, x0:x1] = True
            name, base = self._colour("field")
            oid, cv = len(built.placed), built.canvas
            cv.draw("poly", pts + (cx, cy), cv.part(base, oid))
            cv.draw("outline", pts + (cx, cy), cv.part(base * 0.8, oid))
            built.placed.append(Placed("field", name, (x0, y0, x1, y1), (cx, cy), angle))
            built.textures.append((oid, (x0, y0, x1, y1), angle + math.pi / 2 * int(rng.integers(2)),
                                   rng.uniform(3, 5) * s, rng.uniform(0.07, 0.14)))
            return

    def _place(self, built: Built, cat: str, occ: np.ndarray, road_occ: np.ndarray,
               bands: List[Tuple[str, int, int]], sun: np.ndarray) -> None:
        """Rejection-sample a position for one compact object and draw it; silently gives up when crowded."""
        rng, S, s = self.rng, self.size, self._s
        shape = BUILDERS[cat](rng, s, self.style)
        band = bands[int(rng.integers(len(bands)))] if cat == "vehicle" and bands and rng.random() < 0.5 else None
        angle = shape.angle
        if band is not None:  # drive along the road
            angle = (0.0 if band[0] == "h" else math.pi / 2) + math.pi * int(rng.integers(2)) + rng.normal(0, 0.03)
        c, si = math.cos(angle), math.sin(angle)
        rot = np.array([[c, si], [-si, c]])
        layers = [(op, pts @ rot, col) for op, pts, col in shape.layers]
        fp, sh = layers[0][1], sun * shape.shadow
        lo, hi = np.minimum(fp.min(0), fp.min(0) + sh), np.maximum(fp.max(0), fp.max(0) + sh)
        m = 2 * s
        same = [p.centre for p in built.placed if p.cat == cat]
        for _ in range(30):
            if band is not None:
                width = band[2] - band[1]
                lane = (band[1] + band[2]) / 2 + (width / 4) * (1 if rng.random() < 0.5 else -1)
                along = rng.uniform(0, S)
                cx, cy = (along, lane) if band[0] == "h" else (lane, along)
            elif same and rng.random() < 0.45:  # clusters (tank farms, parking, neighbourhoods)
                cx, cy = np.asarray(same[int(rng.integers(len(same)))]) + rng.normal(0, 14 * s, 2)
            else:
                cx, cy = rng.uniform(1 - lo, S - 1 - hi)
            if cx + lo[0] < 1 or cy + lo[1] < 1 or cx + hi[0] > S - 1 or cy + hi[1] > S - 1:
                continue
            x0, y0 = max(0, int(cx + lo[0] - m)), max(0, int(cy + lo[1] - m))
            x1, y1 = min(S, int(cx + hi[0] + m) + 1), min(S, int(cy + hi[1] + m) + 1)
            if occ[y0:y1, x0:x1].any() or (band is None and road_occ[y0:y1, x0:x1].any()):
                continue
            occ[y0:y1, x0:x1] = True
            self._draw_object(built, cat, layers, (cx, cy), sh, angle)
            return

    def _draw_object(self, built: Built, cat: str, layers: List[Layer], centre: Tuple[float, float],
                     shadow: np.ndarray, angle: float) -> None:
        cv, S, oid = built.canvas, self.size, len(built.placed)
        name, base = self._colour(cat)
        fp = layers[0][1] + centre
        if shadow.any():
            cv.ds.polygon((fp + shadow).ravel().tolist(), fill=255)
        parts: Dict[object, int] = {}
        for op, pts, col in layers:
            key = col if not isinstance(col, tuple) else ("abs",) + col
            if key not in parts:
                if col == "glass":
                    rgb = (58, 66, 78) if base.mean() > 80 else (124, 132, 142)
                elif isinstance(col, tuple):
                    rgb = col
                else:
                    rgb = np.clip(base * col, 0, 255)
                parts[key] = cv.part(rgb, oid)
            cv.draw(op, pts + centre, parts[key])
        lo, hi = fp.min(0), fp.max(0)
        box = (max(0, int(lo[0]) - 2), max(0, int(lo[1]) - 2), min(S, int(hi[0]) + 3), min(S, int(hi[1]) + 3))
        built.placed.append(Placed(cat, name, box, centre, angle))

    def _trees(self, built: Built, blocked: np.ndarray, rgb: RGB, n_range: Tuple[int, int], sun: np.ndarray) -> None:
        """Background clutter (owner -1) in free space, in a few loose clusters."""
        rng, S, s, cv = self.rng, self.size, self._s, built.canvas
        n = int(rng.integers(n_range[0], n_range[1] + 1) * s * s)
        if n == 0:
            return
        col = np.clip(np.asarray(rgb, float) * rng.uniform(0.9, 1.1), 0, 255)
        canopy, light = cv.part(col, -1), cv.part(np.clip(col * 1.3, 0, 255), -1)
        centres = rng.uniform(0, S, (int(rng.integers(1, 4)), 2))
        pos = centres[rng.integers(len(centres), size=n)] + rng.normal(0, 14 * s, (n, 2))
        radii = rng.uniform(1.5, 3.8, n) * s
        for (x, y), r in zip(pos, radii):
            x0, y0, x1, y1 = int(x - r - 1), int(y - r - 1), int(x + r + 2), int(y + r + 2)
            if x0 < 0 or y0 < 0 or x1 > S or y1 > S or blocked[y0:y1, x0:x1].any():
                continue
            cv.ds.ellipse([x - r + sun[0] * 0.6, y - r + sun[1] * 0.6, x + r + sun[0] * 0.6, y + r + sun[1] * 0.6],
                          fill=255)
            cv.dl.ellipse([x - r, y - r, x + r, y + r], fill=canopy)
            if r > 2:
                cv.dl.ellipse([x - r * 0.7 - sun[0] * 0.2, y - r * 0.7 - sun[1] * 0.2,
                               x - sun[0] * 0.2, y - sun[1] * 0.2], fill=light)


def _free_segments(n: int, cuts: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """[0, n) minus the given intervals."""
    segs, a = [], 0
    for lo, hi in sorted(cuts):
        if lo > a:
            segs.append((a, lo))
        a = max(a, hi)
    return segs + [(a, n)] if a < n else segs
