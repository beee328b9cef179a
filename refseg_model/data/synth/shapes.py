"""Object shapes: each compact category's builder returns a `Shape`, a list of layers (polygon / outline /
polyline in object-local coordinates; the first is the footprint) with a colour given as a multiplier of the
object's base colour, an absolute RGB or "glass", plus its shadow length and orientation."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple, Union

import numpy as np

from .styles import RGB

ColourSpec = Union[float, RGB, str]  # multiplier of the base colour | absolute RGB | "glass"
Layer = Tuple[str, np.ndarray, ColourSpec]  # (op in {"poly", "outline", "line"}, N x 2 local points, colour)

WHITE: RGB = (238, 238, 232)


@dataclass
class Shape:
    layers: List[Layer]  # local coordinates, unrotated; layers[0] is the footprint (outermost)
    shadow: float  # shadow length as a fraction of the scene's sun offset
    angle: float  # rotation in radians applied at placement


def rect(w: float, h: float, x: float = 0.0, y: float = 0.0) -> np.ndarray:
    """4 x 2 corners of an axis-aligned w x h rectangle centred on (x, y)."""
    return np.array([[x - w / 2, y - h / 2], [x + w / 2, y - h / 2], [x + w / 2, y + h / 2], [x - w / 2, y + h / 2]])


def ellipse(rx: float, ry: float, n: int = 24, power: float = 1.0) -> np.ndarray:
    """n x 2 points of an ellipse (power < 1 gives a rounded rectangle / superellipse)."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([rx * np.sign(c) * np.abs(c) ** power, ry * np.sign(s) * np.abs(s) ** power], axis=1)


def segment(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y1]], dtype=float)


def axis_angle(rng: np.random.Generator, p_axis: float = 0.7, jitter: float = 0.6) -> float:
    """Mostly axis-aligned orientation (like real buildings), otherwise a random tilt."""
    return float(rng.integers(4) * math.pi / 2 if rng.random() < p_axis else rng.uniform(-jitter, jitter))


def _b_building(rng: np.random.Generator, s: float, style: str) -> Shape:
    if style == "shifted":  # hexagonal, round (with a dome) or octagonal
        r, form = rng.uniform(5.5, 13) * s, int(rng.integers(3))
        if form == 0:
            layers: List[Layer] = [("poly", ellipse(r, r, 6), 1.0), ("outline", ellipse(r * 0.55, r * 0.55, 6), 0.8)]
        elif form == 1:
            layers = [("poly", ellipse(r, r), 1.0), ("poly", ellipse(r * 0.45, r * 0.45, 16), 1.18)]
        else:
            layers = [("poly", ellipse(r, r, 8), 1.0), ("poly", ellipse(r * 0.6, r * 0.6, 8), 0.86)]
        return Shape(layers, 1.0, float(rng.uniform(0, math.pi)))
    w, h = rng.uniform(9, 26, 2) * s
    if rng.random() < 0.6:
        layers = [("poly", rect(w, h), 1.0)]
        if rng.random() < 0.5:  # gable roof: one sunlit half and a ridge
            half, ridge = ((rect(w, h / 2, 0, -h / 4), segment(-w / 2, 0, w / 2, 0)) if w >= h
                           else (rect(w / 2, h, -w / 4, 0), segment(0, -h / 2, 0, h / 2)))
            layers += [("poly", half, 1.14), ("line", ridge, 0.8)]
        else:  # flat roof with a rooftop unit
            ux, uy = rng.uniform(-0.2, 0.2, 2) * (w, h)
            layers.append(("poly", rect(w * 0.25, h * 0.25, ux, uy), 0.78))
    else:  # L shape: a rectangle with one corner cut away
        cw, ch = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
        pts = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2 - ch], [w / 2 - cw, h / 2 - ch],
                        [w / 2 - cw, h / 2], [-w / 2, h / 2]])
        layers = [("poly", pts, 1.0), ("outline", pts, 0.82)]
    return Shape(layers, 1.0, axis_angle(rng))


def _b_vehicle(rng: np.random.Generator, s: float, style: str) -> Shape:
    wid = rng.uniform(4, 7.5) * s
    if style == "shifted":  # trucks: longer, with a cab
        ln = rng.uniform(10, 18) * s
        layers: List[Layer] = [("poly", rect(ln, wid), 1.0), ("poly", rect(ln * 0.22, wid * 0.9, ln * 0.36), 0.72),
                               ("line", segment(ln * 0.2, -wid / 2, ln * 0.2, wid / 2), 0.6)]
    else:
        ln = rng.uniform(8, 14) * s
        layers = [("poly", rect(ln, wid), 1.0), ("poly", rect(ln * 0.16, wid * 0.8, ln * 0.2), "glass")]
    return Shape(layers, 0.4, float(rng.uniform(0, 2 * math.pi)))


def _b_tank(rng: np.random.Generator, s: float, style: str) -> Shape:
    r = rng.uniform(4.5, 11) * s
    ry = r if style == "default" else r * rng.uniform(0.55, 0.8)  # shifted: elliptical
    rim = max(1.0, 0.15 * r)
    layers: List[Layer] = [("poly", ellipse(r, ry), 0.68), ("poly", ellipse(r - rim, ry - rim), 1.0),
                           ("outline", ellipse(r * 0.6, ry * 0.6, 16), 0.86)]
    return Shape(layers, 0.8, float(rng.uniform(0, math.pi)))


def _b_pond(rng: np.random.Generator, s: float, style: str) -> Shape:
    big, t = rng.uniform(8, 17) * s, np.linspace(0, 2 * math.pi, 24, endpoint=False)
    rad = 1.0 + sum(a * rng.uniform(-1, 1) * np.sin(k * t + rng.uniform(0, 6.3))
                    for k, a in ((1, 0.18), (2, 0.14), (3, 0.08)))
    pts = np.stack([big * rad * np.cos(t), big * rng.uniform(0.6, 1.0) * rad * np.sin(t)], axis=1)
    return Shape([("poly", pts, 1.0), ("poly", pts * 0.55, 0.8)], 0.0, float(rng.uniform(0, 2 * math.pi)))


def _b_court(rng: np.random.Generator, s: float, style: str) -> Shape:
    w, h, a = rng.uniform(13, 17) * s, rng.uniform(24, 31) * s, 2 * s
    layers: List[Layer] = [("poly", rect(w + 2 * a, h + 2 * a), 0.78), ("poly", rect(w, h), 1.0),
                           ("outline", rect(w - 1, h - 1), WHITE), ("line", segment(-w / 2, 0, w / 2, 0), WHITE),
                           ("line", segment(0, -h / 4, 0, h / 4), WHITE),
                           ("line", segment(-w / 2, -h / 4, w / 2, -h / 4), WHITE),
                           ("line", segment(-w / 2, h / 4, w / 2, h / 4), WHITE)]
    return Shape(layers, 0.0, axis_angle(rng, 0.8, 0.4))


def _b_solar(rng: np.random.Generator, s: float, style: str) -> Shape:
    rows, cols = int(rng.integers(2, 5)), int(rng.integers(3, 7))
    cw, ch, gap = rng.uniform(3, 4.5) * s, rng.uniform(3, 4.5) * s, max(1.0, s)
    w, h = cols * cw, rows * (ch + gap) + gap
    layers: List[Layer] = [("poly", rect(w + 2 * gap, h), 0.5)]  # metal frame
    layers += [("poly", rect(w, ch, 0, -h / 2 + gap + r * (ch + gap) + ch / 2), 1.0) for r in range(rows)]
    layers += [("line", segment(-w / 2 + c * cw, -h / 2, -w / 2 + c * cw, h / 2), 0.65) for c in range(1, cols)]
    return Shape(layers, 0.3, axis_angle(rng, 0.8, 0.3))


def _b_pool(rng: np.random.Generator, s: float, style: str) -> Shape:
    a, b = rng.uniform(5, 10) * s, rng.uniform(3.5, 6) * s
    outer = ellipse(a, b, 28, 0.3)
    inner = outer * ((a - 1.3 * s) / a, (b - 1.3 * s) / b)
    return Shape([("poly", outer, WHITE), ("poly", inner, 1.0), ("poly", inner * 0.55, 0.86)], 0.0,
                  axis_angle(rng, 0.6, 0.5))


def _b_airplane(rng: np.random.Generator, s: float, style: str) -> Shape:
    ln = rng.uniform(16, 26) * s
    sp, fw = ln * rng.uniform(0.8, 1.0), ln * 0.12
    half = np.array([[ln / 2, 0], [ln * 0.38, -fw / 2], [ln * 0.06, -fw / 2], [-ln * 0.06, -sp / 2],
                     [-ln * 0.16, -sp / 2], [-ln * 0.12, -fw / 2], [-ln * 0.36, -fw / 2], [-ln * 0.46, -sp * 0.22],
                     [-ln * 0.5, -sp * 0.22], [-ln * 0.47, 0]])
    pts = np.concatenate([half, half[-2:0:-1] * (1, -1)])
    return Shape([("poly", pts, 1.0), ("line", segment(ln * 0.44, 0, -ln * 0.4, 0), 0.84)], 0.6,
                  float(rng.uniform(0, 2 * math.pi)))


BUILDERS: Dict[str, Callable[[np.random.Generator, float, str], Shape]] = {
    "building": _b_building, "vehicle": _b_vehicle, "storage tank": _b_tank, "pond": _b_pond, "court": _b_court,
    "solar panel": _b_solar, "swimming pool": _b_pool, "airplane": _b_airplane}
