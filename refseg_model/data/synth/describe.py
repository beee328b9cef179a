"""Description rules: every expression that is unambiguous in a scene, as abstract candidates.

From each object's area, centroid and box we enumerate every (kind, targets) description that picks out its
target(s) unambiguously under explicit rules: unique category; unique colour within its category; size with a
>= 1.5x area margin; image regions / relations to an unambiguous anchor with distance margins; groups of >= 2 for
multi-target expressions. `expressions` picks among them and words them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

from .scene import SceneObject

# Image regions: (vertical word, horizontal word, target box, exclusion box), boxes (x0, x1, y0, y1) normalised.
# A target's centroid must lie in the target box and every other object of its category outside the exclusion box.
REGIONS = (
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


class Stat:
    """Normalised geometry of one object for the description rules."""

    __slots__ = ("cat", "colour", "area", "c", "lo", "hi", "orient")

    def __init__(self, o: SceneObject, orient: str, size: int):
        x0, y0, x1, y1 = o.bbox
        self.cat, self.colour, self.orient = o.category, o.colour, orient
        self.area = o.area / size ** 2
        self.c = (o.centroid[0] / size, o.centroid[1] / size)
        self.lo, self.hi = (x0 / size, y0 / size), (x1 / size, y1 / size)


@dataclass
class Cand:
    """One unambiguous description, before wording: its kind, template key, targets and the words it needs."""

    kind: str
    key: str  # template sub-key
    targets: Tuple[int, ...]
    cat: str
    colour: str = ""  # colour word that belongs in the noun phrase ("colour" kind, colour groups)
    extra: object = None  # region index | orientation | relation name
    anchor: int = -1
    anchor_colour: bool = False


def _inside(o: Stat, box: Tuple[float, float, float, float]) -> bool:
    """Centroid inside box (x0, x1, y0, y1)."""
    return box[0] <= o.c[0] <= box[1] and box[2] <= o.c[1] <= box[3]


def _gap(a: Stat, b: Stat) -> float:
    """Distance between two boxes (0 when they overlap)."""
    dx = max(0.0, b.lo[0] - a.hi[0], a.lo[0] - b.hi[0])
    dy = max(0.0, b.lo[1] - a.hi[1], a.lo[1] - b.hi[1])
    return math.hypot(dx, dy)


def _beyond(t: Stat, a: Stat, axis: int, sign: int) -> bool:
    """Centroid of `t` past `a`'s box along axis/sign, and not far off sideways."""
    past = t.c[axis] < a.lo[axis] - 0.02 if sign < 0 else t.c[axis] > a.hi[axis] + 0.02
    return past and a.lo[1 - axis] - 0.2 <= t.c[1 - axis] <= a.hi[1 - axis] + 0.2


def candidates(objs: List[Stat], kinds: set) -> Dict[str, List[Cand]]:
    """Every unambiguous (kind, targets) description of the scene, per kind."""
    out: Dict[str, List[Cand]] = {k: [] for k in kinds}
    by_cat: Dict[str, List[int]] = {}
    for i, o in enumerate(objs):
        by_cat.setdefault(o.cat, []).append(i)
    groups: Dict[str, Dict[str, List[int]]] = {}
    for cat, ids in by_cat.items():
        g = groups[cat] = {}
        for i in ids:
            g.setdefault(objs[i].colour, []).append(i)
        if "category" in kinds and len(ids) == 1:
            out["category"].append(Cand("category", "", (ids[0],), cat))
        for col, members in g.items():
            if "colour" in kinds and len(members) == 1:
                out["colour"].append(Cand("colour", "", (members[0],), cat, col))
            if "multi" in kinds and 2 <= len(members) < len(ids):
                out["multi"].append(Cand("multi", "two" if len(members) == 2 else "many", tuple(members), cat, col))
        if "multi" in kinds and len(ids) >= 2:
            out["multi"].append(Cand("multi", "two" if len(ids) == 2 else "many", tuple(ids), cat))
        if "size" in kinds and len(ids) >= 2 and cat != "road":
            ranked = sorted(ids, key=lambda i: objs[i].area)
            a = [objs[i].area for i in ranked]
            pair = "pair_" if len(ids) == 2 else ""
            if a[-1] >= _SIZE_RATIO * a[-2] and a[-1] - a[-2] >= _SIZE_MIN_DIFF:
                out["size"].append(Cand("size", pair + "large", (ranked[-1],), cat))
            if a[1] >= _SIZE_RATIO * a[0] and a[1] - a[0] >= _SIZE_MIN_DIFF:
                out["size"].append(Cand("size", pair + "small", (ranked[0],), cat))
        if "position" in kinds:
            for i in ids:
                if cat == "road":  # at most one road per orientation
                    out["position"].append(Cand("position", "orient", (i,), cat, extra=objs[i].orient))
                    continue
                for r, (_, _, box, excl) in enumerate(REGIONS):
                    if _inside(objs[i], box) and not any(_inside(objs[j], excl) for j in ids if j != i):
                        out["position"].append(Cand("position", "region", (i,), cat, extra=r))
    if "relation" in kinds:
        _relations(objs, by_cat, groups, out["relation"])
    return out


def _relations(objs: List[Stat], by_cat: Dict[str, List[int]], groups: Dict[str, Dict[str, List[int]]],
               out: List[Cand]) -> None:
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
                out.append(Cand("relation", "", (t,), cat, extra=rel, anchor=a, anchor_colour=by_colour))

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
