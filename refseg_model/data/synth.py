"""Synthetic aerial-like scenes for referring remote-sensing image segmentation (RRSIS).

A scene is an H x W x 3 top-down image plus a few (expression, mask) pairs whose expressions refer to their
target(s) *unambiguously*. Everything is driven by one ``np.random.default_rng(seed)``, so a seed fixes the whole
sequence of scenes.

Design
------
1. **Layout.** Roads (axis-aligned bands crossing the whole image, at most one horizontal and one vertical) come
   first, then fields (large jittered quads, may run off the image), then compact objects (buildings, vehicles,
   tanks, ...) by rejection sampling against boolean occupancy grids, so that objects never overlap each other.
   Vehicles alone may stand on roads, which is why masks are *visible* masks (a road mask has holes under cars).
   Trees (background clutter, never targets) fill free space last.
2. **Drawing.** Each object is a list of *layers* (polygon / outline / polyline in object-local coordinates; the
   first is the footprint) with a colour given as a multiplier of the object's base colour or as an absolute RGB.
   Layers are drawn with PIL ``ImageDraw`` into one 8-bit *part-index* image; a part table maps each index to an
   RGB colour and to its owning object, so one look-up yields both the picture and the owner map from which
   visible masks are read. Drop shadows go into a separate shade image.
3. **Description.** From the owner map we get each object's area, centroid and box and enumerate every
   expression that is unambiguous under explicit rules: unique category; unique colour within its category;
   size with a >= 1.5x area margin; image regions / relations to an unambiguous anchor with distance margins;
   groups of >= 2 for multi-target expressions. A difficulty-dependent weighting picks expression kinds and a
   per-style table of templates and synonyms turns the abstract description into text.
4. **Compositing** (only once the scene has an expression): part colours over a low-frequency ground texture,
   field stripes, shadows, a slight blur, exposure jitter and sensor noise.

``style="shifted"`` swaps all tables: another ground (sand / snow / rock), other colours (orange, purple, teal,
...), other shapes (hexagonal / round buildings, elliptical tanks, trucks), new categories (solar panel arrays,
swimming pools, airplanes) and other phrasing (compass directions, "segment ...", "find every ...").

Besides the image and samples, a ``Scene`` carries ``objects`` (category, colour, visible mask, box, centroid,
area of everything that can be referred to) and each ``SceneSample`` its ``targets`` (indices into ``objects``),
so that callers and tests can check what an expression refers to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from formats.datasets.interchange import write_annotations
from formats.datasets.splits import counted_splits
from formats.images import save_mask

STYLES = ("default", "shifted")
KINDS = ("category", "colour", "size", "position", "relation", "multi")

RGB = Tuple[int, int, int]
ColourSpec = Union[float, RGB, str]  # multiplier of the base colour | absolute RGB | "glass"
Layer = Tuple[str, np.ndarray, ColourSpec]  # (op in {"poly", "outline", "line"}, N x 2 local points, colour)

WHITE: RGB = (238, 238, 232)

# ------------------------------------------------------------------------------------------------ style tables
# Object colours: style -> category -> colour name -> RGB. Colour words in expressions come from these keys.
_PALETTES: Dict[str, Dict[str, Dict[str, RGB]]] = {
    "default": {
        "building": {"grey": (148, 148, 150), "red": (165, 58, 46), "white": (226, 226, 220),
                     "blue": (60, 90, 150), "brown": (112, 78, 50)},
        "vehicle": {"white": (238, 238, 238), "black": (28, 28, 32), "red": (196, 30, 30),
                    "blue": (36, 70, 180), "yellow": (230, 198, 36)},
        "storage tank": {"white": (232, 232, 226), "grey": (150, 152, 156)},
        "pond": {"blue": (46, 86, 140), "dark green": (30, 82, 64)},
        "court": {"green": (56, 132, 74), "blue": (46, 96, 170), "red": (168, 72, 52)},
        "road": {"grey": (108, 108, 110)},
        "field": {"green": (82, 140, 54), "yellow": (208, 186, 92), "brown": (138, 100, 64)},
    },
    "shifted": {
        "building": {"orange": (216, 118, 40), "purple": (118, 60, 142), "teal": (30, 128, 128),
                     "pink": (226, 140, 172)},
        "vehicle": {"orange": (240, 126, 28), "purple": (132, 58, 164), "teal": (28, 142, 142),
                    "silver": (194, 198, 204)},
        "storage tank": {"silver": (202, 204, 210), "teal": (36, 120, 124)},
        "solar panel": {"dark blue": (30, 44, 104), "black": (24, 26, 34)},
        "swimming pool": {"turquoise": (52, 196, 206), "light blue": (128, 184, 234)},
        "airplane": {"white": (240, 240, 240), "silver": (184, 190, 198), "orange": (230, 120, 36)},
        "road": {"dark grey": (62, 62, 68)},
        "field": {"purple": (138, 110, 172), "orange": (208, 140, 70), "olive": (118, 124, 58)},
    },
}
# Ground types: name -> (base RGB, tree/shrub RGB, (min, max) trees at size 128).
_GROUNDS: Dict[str, Dict[str, Tuple[RGB, RGB, Tuple[int, int]]]] = {
    "default": {"grass": ((92, 118, 64), (38, 64, 34), (8, 30)), "meadow": ((118, 128, 76), (44, 70, 38), (4, 18)),
                "soil": ((148, 124, 92), (52, 74, 40), (0, 8)), "urban": ((128, 126, 120), (46, 72, 40), (0, 10))},
    "shifted": {"sand": ((208, 184, 140), (118, 112, 66), (0, 12)), "snow": ((226, 230, 236), (32, 50, 40), (6, 26)),
                "rock": ((150, 138, 124), (92, 86, 72), (0, 10))},
}
# Compact categories: style -> category -> (sampling weight, max per scene). Roads and fields are handled apart.
_CATEGORIES: Dict[str, Dict[str, Tuple[float, int]]] = {
    "default": {"building": (3.0, 8), "vehicle": (3.0, 10), "storage tank": (2.0, 6), "pond": (1.0, 2),
                "court": (1.0, 2)},
    "shifted": {"building": (3.0, 8), "vehicle": (2.0, 8), "storage tank": (2.0, 6), "solar panel": (1.2, 3),
                "swimming pool": (1.2, 3), "airplane": (1.2, 3)},
}
_PLACE_ORDER = {"pond": 0, "court": 0, "solar panel": 0, "swimming pool": 1, "airplane": 1, "building": 2,
                "storage tank": 3, "vehicle": 4}
_ROAD_MARK: Dict[str, RGB] = {"default": (228, 228, 222), "shifted": (226, 192, 58)}

# Phrasing: style -> table. {the} is "the " or "" (default style only); {cnoun}/{cpl} include the colour word.
_VOCAB: Dict[str, dict] = {
    "default": {
        "nouns": {"building": ["building", "house"], "vehicle": ["vehicle", "car"],
                  "storage tank": ["storage tank", "oil tank", "tank"], "pond": ["pond", "lake"],
                  "court": ["court", "sports court", "tennis court"], "road": ["road", "street"],
                  "field": ["field", "crop field"]},
        "the_prob": 0.75,
        "frames": ["{e}"],
        "templates": {
            "category": {"": ["{the}{noun}", "{the}{noun} in the image", "the only {noun}"]},
            "colour": {"": ["{the}{colour} {noun}", "{the}{noun} that is {colour}"]},
            "size": {"large": ["{the}largest {noun}", "{the}biggest {noun}"],
                     "small": ["{the}smallest {noun}", "{the}tiniest {noun}"],
                     "pair_large": ["{the}big {noun}", "{the}larger {noun}", "{the}bigger {noun}"],
                     "pair_small": ["{the}small {noun}", "{the}smaller {noun}"]},
            "position": {"region": ["{the}{noun} {pos}", "{the}{noun} located {pos}"],
                         "orient": ["{the}{orient} {noun}", "{the}{noun} running {orient_adv}"]},
            "relation": {"": ["{the}{noun} {rel} {anchor}", "{the}{noun} that is {rel} {anchor}"]},
            "multi": {"two": ["all {cpl}", "both {cpl}", "the two {cpl}", "every {cnoun}"],
                      "many": ["all {cpl}", "all the {cpl}", "every {cnoun}", "the {num} {cpl}"]},
        },
        "dirs": {"top": "top", "bottom": "bottom", "left": "left", "right": "right"},
        "edge": ["{prep} the {d}", "on the {d} side", "near the {d} edge of the image"],
        "corner": ["in the {v} {h}", "in the {v} {h} corner", "at the {v}-{h}"],
        "center": ["in the center", "in the middle", "in the centre of the image"],
        "rel": {"left": ["left of", "to the left of"], "right": ["right of", "to the right of"],
                "above": ["above"], "below": ["below", "beneath"], "near": ["next to", "near", "beside", "close to"],
                "closest": ["closest to", "nearest to"], "on": ["on"]},
        "orient": {"h": (["horizontal"], ["horizontally", "from left to right"]),
                   "v": (["vertical"], ["vertically", "from top to bottom"])},
    },
    "shifted": {
        "nouns": {"building": ["building", "hut", "dwelling"], "vehicle": ["truck", "lorry", "automobile"],
                  "storage tank": ["silo", "fuel tank"], "solar panel": ["solar panel array", "solar farm"],
                  "swimming pool": ["swimming pool", "pool"], "airplane": ["airplane", "aircraft", "plane"],
                  "road": ["highway", "road", "track"], "field": ["plot", "crop plot", "farmland patch"]},
        "the_prob": 1.0,
        "frames": ["segment {e}", "find {e}", "locate {e}", "highlight {e}", "mark {e}", "{e}"],
        "templates": {
            "category": {"": ["the {noun}", "the single {noun}", "the one {noun} in the scene"]},
            "colour": {"": ["the {colour} {noun}", "the {noun} coloured {colour}"]},
            "size": {"large": ["the {noun} with the largest footprint", "the most extensive {noun}"],
                     "small": ["the {noun} with the smallest footprint", "the most compact {noun}"],
                     "pair_large": ["the larger of the two {pl}", "the {noun} with the larger footprint"],
                     "pair_small": ["the smaller of the two {pl}", "the more compact {noun}"]},
            "position": {"region": ["the {noun} {pos}", "the {noun} situated {pos}"],
                         "orient": ["the {orient} {noun}", "the {noun} running {orient_adv}"]},
            "relation": {"": ["the {noun} {rel} {anchor}", "the {noun} lying {rel} {anchor}"]},
            "multi": {"two": ["every {cnoun}", "each of the two {cpl}", "all of the {cpl}", "every single {cnoun}"],
                      "many": ["every {cnoun}", "each {cnoun}", "all of the {cpl}", "all {num} {cpl}"]},
        },
        "dirs": {"top": "north", "bottom": "south", "left": "west", "right": "east"},
        "edge": ["in the {d}", "on the {d}ern side", "in the {d}ern part of the scene"],
        "corner": ["in the {v}{h}", "in the {v}-{h} corner", "in the {v}{h} of the scene"],
        "center": ["in the central area", "at the heart of the scene"],
        "rel": {"left": ["to the west of", "west of"], "right": ["to the east of", "east of"],
                "above": ["to the north of", "north of"], "below": ["to the south of", "south of"],
                "near": ["adjacent to", "bordering", "right beside"],
                "closest": ["nearest to", "with the shortest distance to"], "on": ["driving on", "parked on"]},
        "orient": {"h": (["east-west"], ["from east to west"]), "v": (["north-south"], ["from north to south"])},
    },
}
_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
_PLURAL_EXCEPTIONS = {"aircraft": "aircraft"}

# Kind schedule: kind -> (difficulty where it starts, weight at difficulty 0 or at its start, weight at 1).
_KIND_SCHEDULE: Dict[str, Tuple[float, float, float]] = {
    "category": (0.0, 1.0, 0.6), "colour": (0.0, 1.0, 1.0), "size": (0.15, 0.25, 1.0),
    "position": (0.15, 0.3, 1.2), "multi": (0.25, 0.2, 0.8), "relation": (0.35, 0.4, 1.5)}

# Image regions: (vertical word, horizontal word, target box, exclusion box), boxes (x0, x1, y0, y1) normalised.
# A target's centroid must lie in the target box and every other object of its category outside the exclusion box.
_REGIONS = (
    ("top", None, (0.0, 1.0, 0.0, 0.35), (0.0, 1.0, 0.0, 0.45)),
    ("bottom", None, (0.0, 1.0, 0.65, 1.0), (0.0, 1.0, 0.55, 1.0)),
    (None, "left", (0.0, 0.35, 0.0, 1.0), (0.0, 0.45, 0.0, 1.0)),
    (None, "right", (0.65, 1.0, 0.0, 1.0), (0.55, 1.0, 0.0, 1.0)),
    ("top", "left", (0.0, 0.38, 0.0, 0.38), (0.0, 0.5, 0.0, 0.5)),  # corners: the quadrant holds no other
    ("top", "right", (0.62, 1.0, 0.0, 0.38), (0.5, 1.0, 0.0, 0.5)),
    ("bottom", "left", (0.0, 0.38, 0.62, 1.0), (0.0, 0.5, 0.5, 1.0)),
    ("bottom", "right", (0.62, 1.0, 0.62, 1.0), (0.5, 1.0, 0.5, 1.0)),
    (None, None, (0.35, 0.65, 0.35, 0.65), (0.25, 0.75, 0.25, 0.75)),
)
_DIRECTIONS = (("left", 0, -1), ("right", 0, 1), ("above", 1, -1), ("below", 1, 1))  # (relation, axis, sign)
_SIZE_RATIO, _SIZE_MIN_DIFF = 1.5, 0.002  # area ratio and absolute difference (fraction of the image)


# ------------------------------------------------------------------------------------------------ public types
@dataclass
class SceneObject:
    """One drawn object. `mask`: H x W bool, its visible pixels; `bbox`: (x0, y0, x1, y1) pixels, exclusive end;
    `centroid`: (x, y) pixels; `area`: visible pixel count."""

    category: str
    colour: str
    mask: np.ndarray
    bbox: Tuple[int, int, int, int]
    centroid: Tuple[float, float]
    area: int


@dataclass
class SceneSample:
    """One expression on a scene. `mask`: H x W bool, union of the visible pixels of the targets."""

    expression: str
    mask: np.ndarray
    kind: str  # one of KINDS
    targets: Tuple[int, ...] = ()  # indices into Scene.objects


@dataclass
class Scene:
    """`image`: H x W x 3 uint8. `objects`: everything that can be referred to (roads and fields included)."""

    image: np.ndarray
    samples: List[SceneSample]
    objects: List[SceneObject] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ shapes
@dataclass
class _Shape:
    layers: List[Layer]  # local coordinates, unrotated; layers[0] is the footprint (outermost)
    shadow: float  # shadow length as a fraction of the scene's sun offset
    angle: float  # rotation in radians applied at placement


def _rect(w: float, h: float, x: float = 0.0, y: float = 0.0) -> np.ndarray:
    """4 x 2 corners of an axis-aligned w x h rectangle centred on (x, y)."""
    return np.array([[x - w / 2, y - h / 2], [x + w / 2, y - h / 2], [x + w / 2, y + h / 2], [x - w / 2, y + h / 2]])


def _ellipse(rx: float, ry: float, n: int = 24, power: float = 1.0) -> np.ndarray:
    """n x 2 points of an ellipse (power < 1 gives a rounded rectangle / superellipse)."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([rx * np.sign(c) * np.abs(c) ** power, ry * np.sign(s) * np.abs(s) ** power], axis=1)


def _segment(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y1]], dtype=float)


def _axis_angle(rng: np.random.Generator, p_axis: float = 0.7, jitter: float = 0.6) -> float:
    """Mostly axis-aligned orientation (like real buildings), otherwise a random tilt."""
    return float(rng.integers(4) * math.pi / 2 if rng.random() < p_axis else rng.uniform(-jitter, jitter))


def _b_building(rng: np.random.Generator, s: float, style: str) -> _Shape:
    if style == "shifted":  # hexagonal, round (with a dome) or octagonal
        r, form = rng.uniform(5.5, 13) * s, int(rng.integers(3))
        if form == 0:
            layers: List[Layer] = [("poly", _ellipse(r, r, 6), 1.0), ("outline", _ellipse(r * 0.55, r * 0.55, 6), 0.8)]
        elif form == 1:
            layers = [("poly", _ellipse(r, r), 1.0), ("poly", _ellipse(r * 0.45, r * 0.45, 16), 1.18)]
        else:
            layers = [("poly", _ellipse(r, r, 8), 1.0), ("poly", _ellipse(r * 0.6, r * 0.6, 8), 0.86)]
        return _Shape(layers, 1.0, float(rng.uniform(0, math.pi)))
    w, h = rng.uniform(9, 26, 2) * s
    if rng.random() < 0.6:
        layers = [("poly", _rect(w, h), 1.0)]
        if rng.random() < 0.5:  # gable roof: one sunlit half and a ridge
            half, ridge = ((_rect(w, h / 2, 0, -h / 4), _segment(-w / 2, 0, w / 2, 0)) if w >= h
                           else (_rect(w / 2, h, -w / 4, 0), _segment(0, -h / 2, 0, h / 2)))
            layers += [("poly", half, 1.14), ("line", ridge, 0.8)]
        else:  # flat roof with a rooftop unit
            ux, uy = rng.uniform(-0.2, 0.2, 2) * (w, h)
            layers.append(("poly", _rect(w * 0.25, h * 0.25, ux, uy), 0.78))
    else:  # L shape: a rectangle with one corner cut away
        cw, ch = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
        pts = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2 - ch], [w / 2 - cw, h / 2 - ch],
                        [w / 2 - cw, h / 2], [-w / 2, h / 2]])
        layers = [("poly", pts, 1.0), ("outline", pts, 0.82)]
    return _Shape(layers, 1.0, _axis_angle(rng))


def _b_vehicle(rng: np.random.Generator, s: float, style: str) -> _Shape:
    wid = rng.uniform(4, 7.5) * s
    if style == "shifted":  # trucks: longer, with a cab
        ln = rng.uniform(10, 18) * s
        layers: List[Layer] = [("poly", _rect(ln, wid), 1.0), ("poly", _rect(ln * 0.22, wid * 0.9, ln * 0.36), 0.72),
                               ("line", _segment(ln * 0.2, -wid / 2, ln * 0.2, wid / 2), 0.6)]
    else:
        ln = rng.uniform(8, 14) * s
        layers = [("poly", _rect(ln, wid), 1.0), ("poly", _rect(ln * 0.16, wid * 0.8, ln * 0.2), "glass")]
    return _Shape(layers, 0.4, float(rng.uniform(0, 2 * math.pi)))


def _b_tank(rng: np.random.Generator, s: float, style: str) -> _Shape:
    r = rng.uniform(4.5, 11) * s
    ry = r if style == "default" else r * rng.uniform(0.55, 0.8)  # shifted: elliptical
    rim = max(1.0, 0.15 * r)
    layers: List[Layer] = [("poly", _ellipse(r, ry), 0.68), ("poly", _ellipse(r - rim, ry - rim), 1.0),
                           ("outline", _ellipse(r * 0.6, ry * 0.6, 16), 0.86)]
    return _Shape(layers, 0.8, float(rng.uniform(0, math.pi)))


def _b_pond(rng: np.random.Generator, s: float, style: str) -> _Shape:
    big, t = rng.uniform(8, 17) * s, np.linspace(0, 2 * math.pi, 24, endpoint=False)
    rad = 1.0 + sum(a * rng.uniform(-1, 1) * np.sin(k * t + rng.uniform(0, 6.3))
                    for k, a in ((1, 0.18), (2, 0.14), (3, 0.08)))
    pts = np.stack([big * rad * np.cos(t), big * rng.uniform(0.6, 1.0) * rad * np.sin(t)], axis=1)
    return _Shape([("poly", pts, 1.0), ("poly", pts * 0.55, 0.8)], 0.0, float(rng.uniform(0, 2 * math.pi)))


def _b_court(rng: np.random.Generator, s: float, style: str) -> _Shape:
    w, h, a = rng.uniform(13, 17) * s, rng.uniform(24, 31) * s, 2 * s
    layers: List[Layer] = [("poly", _rect(w + 2 * a, h + 2 * a), 0.78), ("poly", _rect(w, h), 1.0),
                           ("outline", _rect(w - 1, h - 1), WHITE), ("line", _segment(-w / 2, 0, w / 2, 0), WHITE),
                           ("line", _segment(0, -h / 4, 0, h / 4), WHITE),
                           ("line", _segment(-w / 2, -h / 4, w / 2, -h / 4), WHITE),
                           ("line", _segment(-w / 2, h / 4, w / 2, h / 4), WHITE)]
    return _Shape(layers, 0.0, _axis_angle(rng, 0.8, 0.4))


def _b_solar(rng: np.random.Generator, s: float, style: str) -> _Shape:
    rows, cols = int(rng.integers(2, 5)), int(rng.integers(3, 7))
    cw, ch, gap = rng.uniform(3, 4.5) * s, rng.uniform(3, 4.5) * s, max(1.0, s)
    w, h = cols * cw, rows * (ch + gap) + gap
    layers: List[Layer] = [("poly", _rect(w + 2 * gap, h), 0.5)]  # metal frame
    layers += [("poly", _rect(w, ch, 0, -h / 2 + gap + r * (ch + gap) + ch / 2), 1.0) for r in range(rows)]
    layers += [("line", _segment(-w / 2 + c * cw, -h / 2, -w / 2 + c * cw, h / 2), 0.65) for c in range(1, cols)]
    return _Shape(layers, 0.3, _axis_angle(rng, 0.8, 0.3))


def _b_pool(rng: np.random.Generator, s: float, style: str) -> _Shape:
    a, b = rng.uniform(5, 10) * s, rng.uniform(3.5, 6) * s
    outer = _ellipse(a, b, 28, 0.3)
    inner = outer * ((a - 1.3 * s) / a, (b - 1.3 * s) / b)
    return _Shape([("poly", outer, WHITE), ("poly", inner, 1.0), ("poly", inner * 0.55, 0.86)], 0.0,
                  _axis_angle(rng, 0.6, 0.5))


def _b_airplane(rng: np.random.Generator, s: float, style: str) -> _Shape:
    ln = rng.uniform(16, 26) * s
    sp, fw = ln * rng.uniform(0.8, 1.0), ln * 0.12
    half = np.array([[ln / 2, 0], [ln * 0.38, -fw / 2], [ln * 0.06, -fw / 2], [-ln * 0.06, -sp / 2],
                     [-ln * 0.16, -sp / 2], [-ln * 0.12, -fw / 2], [-ln * 0.36, -fw / 2], [-ln * 0.46, -sp * 0.22],
                     [-ln * 0.5, -sp * 0.22], [-ln * 0.47, 0]])
    pts = np.concatenate([half, half[-2:0:-1] * (1, -1)])
    return _Shape([("poly", pts, 1.0), ("line", _segment(ln * 0.44, 0, -ln * 0.4, 0), 0.84)], 0.6,
                  float(rng.uniform(0, 2 * math.pi)))


_BUILDERS: Dict[str, Callable[[np.random.Generator, float, str], _Shape]] = {
    "building": _b_building, "vehicle": _b_vehicle, "storage tank": _b_tank, "pond": _b_pond, "court": _b_court,
    "solar panel": _b_solar, "swimming pool": _b_pool, "airplane": _b_airplane}


# ------------------------------------------------------------------------------------------------ internals
class _Canvas:
    """Part-index image (each part: one RGB and one owner) plus a shade image, both drawn with ImageDraw."""

    def __init__(self, size: int):
        self.lab = Image.new("L", (size, size), 0)
        self.shade = Image.new("L", (size, size), 0)
        self.dl, self.ds = ImageDraw.Draw(self.lab), ImageDraw.Draw(self.shade)
        self.rgb: List[Sequence[float]] = [(0.0, 0.0, 0.0)]  # part 0: ground
        self.owner: List[int] = [-1]
        self.lw = max(1, round(size / 128))

    def part(self, rgb: Sequence[float], owner: int) -> int:
        if len(self.rgb) >= 256:
            raise RuntimeError("too many parts for an 8-bit part image")
        self.rgb.append(rgb)
        self.owner.append(owner)
        return len(self.rgb) - 1

    def draw(self, op: str, pts: np.ndarray, idx: int) -> None:
        flat = pts.ravel().tolist()
        if op == "poly":
            self.dl.polygon(flat, fill=idx)
        elif op == "outline":
            self.dl.polygon(flat, outline=idx, width=self.lw)
        else:
            self.dl.line(flat, fill=idx, width=self.lw)


@dataclass
class _Placed:
    cat: str
    colour: str
    box: Tuple[int, int, int, int]  # pixel region containing the object (x0, y0, x1, y1)
    centre: Tuple[float, float]
    angle: float = 0.0
    orient: str = ""  # roads: "h" | "v"


@dataclass
class _Built:
    canvas: _Canvas
    placed: List[_Placed]
    ground: np.ndarray  # 3, float
    textures: List[Tuple[int, Tuple[int, int, int, int], float, float, float]]  # (owner, box, angle, period, amp)
    lab: Optional[np.ndarray] = None  # H x W uint8 part indices
    owner_map: Optional[np.ndarray] = None  # H x W int16 object index, -1 = background


class _Stat:
    """Normalised geometry of one object for the description rules."""

    __slots__ = ("cat", "colour", "area", "c", "lo", "hi", "orient")

    def __init__(self, o: SceneObject, orient: str, size: int):
        x0, y0, x1, y1 = o.bbox
        self.cat, self.colour, self.orient = o.category, o.colour, orient
        self.area = o.area / size ** 2
        self.c = (o.centroid[0] / size, o.centroid[1] / size)
        self.lo, self.hi = (x0 / size, y0 / size), (x1 / size, y1 / size)


@dataclass
class _Cand:
    kind: str
    key: str  # template sub-key
    targets: Tuple[int, ...]
    cat: str
    colour: str = ""  # colour word that belongs in the noun phrase ("colour" kind, colour groups)
    extra: object = None  # region index | orientation | relation name
    anchor: int = -1
    anchor_colour: bool = False


def _plural(noun: str) -> str:
    last = noun.rsplit(" ", 1)[-1]
    if last in _PLURAL_EXCEPTIONS:
        return noun[: -len(last)] + _PLURAL_EXCEPTIONS[last]
    return noun + ("es" if noun.endswith(("s", "sh", "ch")) else "s")


def _inside(o: _Stat, box: Tuple[float, float, float, float]) -> bool:
    """Centroid inside box (x0, x1, y0, y1)."""
    return box[0] <= o.c[0] <= box[1] and box[2] <= o.c[1] <= box[3]


def _gap(a: _Stat, b: _Stat) -> float:
    """Distance between two boxes (0 when they overlap)."""
    dx = max(0.0, b.lo[0] - a.hi[0], a.lo[0] - b.hi[0])
    dy = max(0.0, b.lo[1] - a.hi[1], a.lo[1] - b.hi[1])
    return math.hypot(dx, dy)


def _beyond(t: _Stat, a: _Stat, axis: int, sign: int) -> bool:
    """Centroid of `t` past `a`'s box along axis/sign, and not far off sideways."""
    past = t.c[axis] < a.lo[axis] - 0.02 if sign < 0 else t.c[axis] > a.hi[axis] + 0.02
    return past and a.lo[1 - axis] - 0.2 <= t.c[1 - axis] <= a.hi[1 - axis] + 0.2


def _kind_weight(kind: str, d: float) -> float:
    start, w0, w1 = _KIND_SCHEDULE[kind]
    return 0.0 if d < start else w0 + (w1 - w0) * (d - start) / (1.0 - start)


def _interp_matrix(n: int, g: int) -> np.ndarray:
    """n x g bilinear up-sampling matrix."""
    t = np.linspace(0, g - 1, n)
    j = np.minimum(np.floor(t).astype(int), g - 2)
    w = (t - j).astype(np.float32)
    m = np.zeros((n, g), np.float32)
    m[np.arange(n), j], m[np.arange(n), j + 1] = 1 - w, w
    return m


def _free_segments(n: int, cuts: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """[0, n) minus the given intervals."""
    segs, a = [], 0
    for lo, hi in sorted(cuts):
        if lo > a:
            segs.append((a, lo))
        a = max(a, hi)
    return segs + [(a, n)] if a < n else segs


# ------------------------------------------------------------------------------------------------ generator
class SceneGenerator:
    """Deterministic stream of synthetic scenes: `SceneGenerator(128, "default", seed).scene(difficulty)`."""

    def __init__(self, size: int = 128, style: str = "default", seed: int = 0):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, not {style!r}")
        if size < 48:
            raise ValueError("size must be at least 48 pixels")
        self.size, self.style, self.seed = int(size), style, seed
        self.rng = np.random.default_rng(seed)
        self._s = self.size / 128.0
        self._pal, self._voc = _PALETTES[style], _VOCAB[style]
        self._cats = _CATEGORIES[style]
        self._up = {g: _interp_matrix(self.size, g) for g in (5, 16)}
        self._ar = np.arange(self.size, dtype=np.float64)
        self._yy, self._xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32)

    # -------------------------------------------------------------------------------------------- public
    def scene(self, difficulty: float = 1.0, max_expressions: int = 3) -> Scene:
        """One scene with 1..max_expressions unambiguous expressions.

        difficulty in [0, 1]: 0 = 2-3 objects, category / colour expressions only; 1 = up to 10 objects and all
        expression kinds. Returns a Scene whose image is size x size x 3 uint8 and masks size x size bool.
        """
        d = float(min(max(difficulty, 0.0), 1.0))
        kinds = {k for k in KINDS if _kind_weight(k, d) > 0}
        for _ in range(200):
            built = self._layout(d)
            objects, orients = self._objects(built)
            if len(objects) < 2:
                continue
            stats = [_Stat(o, r, self.size) for o, r in zip(objects, orients)]
            samples = self._select(self._candidates(stats, kinds), objects, d, max(1, int(max_expressions)))
            if samples:
                return Scene(self._composite(built), samples, objects)
        raise RuntimeError("could not generate a describable scene")  # pragma: no cover

    # -------------------------------------------------------------------------------------------- layout
    def _colour(self, cat: str) -> Tuple[str, np.ndarray]:
        names = list(self._pal[cat])
        name = names[int(self.rng.integers(len(names)))]
        base = np.asarray(self._pal[cat][name], np.float64)
        return name, np.clip(base * self.rng.uniform(0.93, 1.06) + self.rng.normal(0, 4, 3), 0, 255)

    def _layout(self, d: float) -> _Built:
        rng, S, s = self.rng, self.size, self._s
        ground_name = list(_GROUNDS[self.style])[int(rng.integers(len(_GROUNDS[self.style])))]
        ground, tree_rgb, tree_n = _GROUNDS[self.style][ground_name]
        built = _Built(_Canvas(S), [], np.asarray(ground, np.float64) + rng.normal(0, 5, 3), [])
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
        for cat in sorted(counts, key=_PLACE_ORDER.__getitem__):
            for _ in range(counts[cat]):
                self._place(built, cat, occ, road_occ, bands, sun)
        self._trees(built, occ | road_occ, tree_rgb, tree_n, sun)

        built.lab = np.asarray(built.canvas.lab)
        built.owner_map = np.asarray(built.canvas.owner, np.int16)[built.lab]
        return built

    def _roads(self, built: _Built, orients: List[str], road_occ: np.ndarray) -> List[Tuple[str, int, int]]:
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
            built.placed.append(_Placed("road", name, box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), orient=o))
            bands.append((o, lo, hi, oid, base))
        for o, lo, hi, oid, base in bands:  # markings after all bodies, interrupted at crossings
            segs = _free_segments(S, [(b[1], b[2]) for b in bands if b[0] != o])
            mark, period = cv.part(np.asarray(_ROAD_MARK[self.style], float), oid), rng.uniform(8, 12) * s
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

    def _field(self, built: _Built, occ: np.ndarray, road_occ: np.ndarray) -> None:
        rng, S, s = self.rng, self.size, self._s
        pts = _rect(rng.uniform(30, 56) * s, rng.uniform(24, 46) * s) + rng.uniform(-4, 4, (4, 2)) * s
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
            built.placed.append(_Placed("field", name, (x0, y0, x1, y1), (cx, cy), angle))
            built.textures.append((oid, (x0, y0, x1, y1), angle + math.pi / 2 * int(rng.integers(2)),
                                   rng.uniform(3, 5) * s, rng.uniform(0.07, 0.14)))
            return

    def _place(self, built: _Built, cat: str, occ: np.ndarray, road_occ: np.ndarray,
               bands: List[Tuple[str, int, int]], sun: np.ndarray) -> None:
        """Rejection-sample a position for one compact object and draw it; silently gives up when crowded."""
        rng, S, s = self.rng, self.size, self._s
        shape = _BUILDERS[cat](rng, s, self.style)
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

    def _draw_object(self, built: _Built, cat: str, layers: List[Layer], centre: Tuple[float, float],
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
        built.placed.append(_Placed(cat, name, box, centre, angle))

    def _trees(self, built: _Built, blocked: np.ndarray, rgb: RGB, n_range: Tuple[int, int], sun: np.ndarray) -> None:
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

    # -------------------------------------------------------------------------------------------- masks
    def _objects(self, built: _Built) -> Tuple[List[SceneObject], List[str]]:
        """Visible masks and geometry of the placed objects (objects with no visible pixel are dropped)."""
        S, om = self.size, built.owner_map
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
            centroid = (float(cc @ self._ar[x0:x1]) / area + 0.5, float(rc @ self._ar[y0:y1]) / area + 0.5)
            box = (x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)
            objects.append(SceneObject(p.cat, p.colour, mask, box, centroid, area))
            orients.append(p.orient)
        return objects, orients

    # -------------------------------------------------------------------------------------------- description
    def _candidates(self, objs: List[_Stat], kinds: set) -> Dict[str, List[_Cand]]:
        """Every unambiguous (kind, targets) description of the scene, per kind."""
        out: Dict[str, List[_Cand]] = {k: [] for k in kinds}
        by_cat: Dict[str, List[int]] = {}
        for i, o in enumerate(objs):
            by_cat.setdefault(o.cat, []).append(i)
        groups: Dict[str, Dict[str, List[int]]] = {}
        for cat, ids in by_cat.items():
            g = groups[cat] = {}
            for i in ids:
                g.setdefault(objs[i].colour, []).append(i)
            if "category" in kinds and len(ids) == 1:
                out["category"].append(_Cand("category", "", (ids[0],), cat))
            for col, members in g.items():
                if "colour" in kinds and len(members) == 1:
                    out["colour"].append(_Cand("colour", "", (members[0],), cat, col))
                if "multi" in kinds and 2 <= len(members) < len(ids):
                    out["multi"].append(_Cand("multi", "two" if len(members) == 2 else "many", tuple(members), cat,
                                              col))
            if "multi" in kinds and len(ids) >= 2:
                out["multi"].append(_Cand("multi", "two" if len(ids) == 2 else "many", tuple(ids), cat))
            if "size" in kinds and len(ids) >= 2 and cat != "road":
                ranked = sorted(ids, key=lambda i: objs[i].area)
                a = [objs[i].area for i in ranked]
                pair = "pair_" if len(ids) == 2 else ""
                if a[-1] >= _SIZE_RATIO * a[-2] and a[-1] - a[-2] >= _SIZE_MIN_DIFF:
                    out["size"].append(_Cand("size", pair + "large", (ranked[-1],), cat))
                if a[1] >= _SIZE_RATIO * a[0] and a[1] - a[0] >= _SIZE_MIN_DIFF:
                    out["size"].append(_Cand("size", pair + "small", (ranked[0],), cat))
            if "position" in kinds:
                for i in ids:
                    if cat == "road":  # at most one road per orientation
                        out["position"].append(_Cand("position", "orient", (i,), cat, extra=objs[i].orient))
                        continue
                    for r, (_, _, box, excl) in enumerate(_REGIONS):
                        if _inside(objs[i], box) and not any(_inside(objs[j], excl) for j in ids if j != i):
                            out["position"].append(_Cand("position", "region", (i,), cat, extra=r))
        if "relation" in kinds:
            self._relations(objs, by_cat, groups, out["relation"])
        return out

    @staticmethod
    def _relations(objs: List[_Stat], by_cat: Dict[str, List[int]], groups: Dict[str, Dict[str, List[int]]],
                   out: List[_Cand]) -> None:
        """Target-anchor relations; anchors are objects unique by category or by colour (fields excluded)."""
        anchors = []
        for cat, ids in by_cat.items():
            if cat == "field":
                continue
            if len(ids) == 1:
                anchors.append((ids[0], False))
            else:
                anchors += [(m[0], True) for m in groups[cat].values() if len(m) == 1]
        for a, by_colour in anchors:
            A = objs[a]
            for cat, ids in by_cat.items():
                if cat in ("road", "field") or cat == A.cat:
                    continue

                def add(rel: str, t: int) -> None:
                    out.append(_Cand("relation", "", (t,), cat, extra=rel, anchor=a, anchor_colour=by_colour))

                for rel, axis, sign in _DIRECTIONS:
                    hits = [i for i in ids if _beyond(objs[i], A, axis, sign)]
                    if len(hits) == 1 and all(sign * (objs[j].c[axis] - A.c[axis]) < 0 for j in ids if j != hits[0]):
                        add(rel, hits[0])
                gaps = sorted((_gap(objs[i], A), i) for i in ids)
                g0, t = gaps[0]
                g1 = gaps[1][0] if len(gaps) > 1 else 9.0
                if A.cat == "road":
                    on = [i for i in ids if _inside(objs[i], (A.lo[0], A.hi[0], A.lo[1], A.hi[1]))]
                    if len(on) == 1:
                        add("on", on[0])
                if 0 < g0 <= 0.08 and g1 >= max(3 * g0, 0.15):
                    add("near", t)
                if g0 > 0 and len(gaps) > 1 and g1 >= _SIZE_RATIO * g0 + 0.05:
                    add("closest", t)

    def _select(self, cands: Dict[str, List[_Cand]], objects: List[SceneObject], d: float,
                k_max: int) -> List[SceneSample]:
        """Pick up to k_max candidates with distinct target sets, kinds weighted by difficulty."""
        rng, out, used = self.rng, [], set()
        while len(out) < k_max:
            avail = [k for k in KINDS if cands.get(k)]
            if not avail:
                break
            w = np.array([_kind_weight(k, d) for k in avail])
            lst = cands[avail[int(rng.choice(len(avail), p=w / w.sum()))]]
            c = lst.pop(int(rng.integers(len(lst))))
            if c.targets in used:
                continue
            used.add(c.targets)
            mask = objects[c.targets[0]].mask.copy()
            for t in c.targets[1:]:
                mask |= objects[t].mask
            out.append(SceneSample(self._phrase(c, objects), mask, c.kind, c.targets))
        return out

    def _pick(self, seq: Sequence[str]) -> str:
        return seq[int(self.rng.integers(len(seq)))]

    def _phrase(self, c: _Cand, objects: List[SceneObject]) -> str:
        """Render a candidate with the style's templates and synonyms."""
        V, pick = self._voc, self._pick
        noun = pick(V["nouns"][c.cat])
        cnoun = f"{c.colour} {noun}" if c.colour and c.kind == "multi" else noun
        slots = {"the": "the " if self.rng.random() < V["the_prob"] else "", "noun": noun, "pl": _plural(noun),
                 "cnoun": cnoun, "cpl": _plural(cnoun), "colour": c.colour,
                 "num": _NUMBERS.get(len(c.targets), str(len(c.targets)))}
        key = c.key
        if c.kind == "position" and key == "orient":
            adjs, advs = V["orient"][c.extra]
            slots.update(orient=pick(adjs), orient_adv=pick(advs))
        elif c.kind == "position":
            v, h, _, _ = _REGIONS[c.extra]
            dv, dh = V["dirs"].get(v), V["dirs"].get(h)
            if v and h:
                slots["pos"] = pick(V["corner"]).format(v=dv, h=dh)
            elif v or h:
                slots["pos"] = pick(V["edge"]).format(d=dv or dh, prep="at" if v else "on")
            else:
                slots["pos"] = pick(V["center"])
        elif c.kind == "relation":
            a = objects[c.anchor]
            anoun = pick(V["nouns"][a.category])
            slots.update(rel=pick(V["rel"][c.extra]),
                         anchor="the " + (f"{a.colour} {anoun}" if c.anchor_colour else anoun))
        text = pick(V["templates"][c.kind][key]).format(**slots)
        return " ".join(pick(V["frames"]).format(e=text).split())

    # -------------------------------------------------------------------------------------------- compositing
    def _upsample(self, grid: np.ndarray) -> np.ndarray:
        """g x g x c grid -> size x size x c, bilinear."""
        g, c = grid.shape[0], grid.shape[2]
        m = self._up[g]
        rows = (m @ grid.reshape(g, g * c)).reshape(self.size, g, c)
        return (rows.transpose(0, 2, 1) @ m.T).transpose(0, 2, 1)

    def _composite(self, built: _Built) -> np.ndarray:
        rng, S, s, lab = self.rng, self.size, self._s, built.lab
        ground = (built.ground.astype(np.float32)
                  + self._upsample(rng.normal(0, 9, (5, 5, 1)).astype(np.float32)
                                   + rng.normal(0, 2.5, (5, 5, 3)).astype(np.float32))
                  + self._upsample(rng.normal(0, 5, (16, 16, 1)).astype(np.float32)))
        img = np.asarray(built.canvas.rgb, np.float32)[lab]
        np.copyto(img, ground, where=(lab == 0)[..., None])
        for oid, (x0, y0, x1, y1), angle, period, amp in built.textures:  # field stripes
            phase = (self._xx[y0:y1, x0:x1] * math.cos(angle) + self._yy[y0:y1, x0:x1] * math.sin(angle))
            gain = 1 + amp * np.sin(phase * (2 * math.pi / period))
            sub, own = img[y0:y1, x0:x1], built.owner_map[y0:y1, x0:x1] == oid
            sub[own] *= gain[own][:, None]
        # shadows fall on ground, trees, roads and fields, not on compact objects
        receives = np.array([o < 0 or built.placed[o].cat in ("road", "field") for o in built.canvas.owner])
        dark = (np.asarray(built.canvas.shade) > 0) & receives[lab]
        img[dark] *= 0.58
        img *= (rng.uniform(0.92, 1.08) * rng.uniform(0.97, 1.03, 3)).astype(np.float32)
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5 * s))
        out = np.asarray(pil, np.float32)
        out += rng.standard_normal((S, S, 3), dtype=np.float32) * 2.5
        out += rng.standard_normal((S, S, 1), dtype=np.float32) * 3.0
        return np.clip(out, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ data set
def write_dataset(out_dir: Union[str, Path], n_images: int, size: int = 128, style: str = "default", seed: int = 0,
                  expressions_per_image: int = 3, split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  progress: bool = True, difficulty: float = 1.0) -> int:
    """Write `n_images` scenes as an interchange-layout data set and return the number of samples.

    Layout: images/NNNNNN.png, masks/NNNNNN_K.png (8-bit, 255 = target) and annotations.jsonl. The split is
    assigned per image, so all expressions of an image share it. Deterministic for a given seed.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    splits = counted_splits(n_images, split_fractions, seed)
    gen = SceneGenerator(size, style, seed)
    records = []
    for i in tqdm(range(n_images), disable=not progress, desc=f"synth {style}", unit="img"):
        sc = gen.scene(difficulty, expressions_per_image)
        image = f"images/{i:06d}.png"
        Image.fromarray(sc.image).save(out / image)
        for k, smp in enumerate(sc.samples):
            mask = f"masks/{i:06d}_{k}.png"
            save_mask(smp.mask, out / mask)
            records.append({"image": image, "mask": mask, "expression": smp.expression, "split": splits[i]})
    write_annotations(out, records)
    return len(records)
