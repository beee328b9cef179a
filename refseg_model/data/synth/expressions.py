"""Expressions: which unambiguous descriptions a scene gets, and their wording.

A difficulty-dependent weighting picks expression kinds, and the style's table of templates and synonyms
(`vocabulary`) turns each abstract description (`describe.Cand`) into text.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .describe import REGIONS, Cand
from .scene import KINDS, SceneObject, SceneSample
from .vocabulary import NUMBERS, VOCAB, plural

# Kind schedule: kind -> (difficulty where it starts, weight at difficulty 0 or at its start, weight at 1).
KIND_SCHEDULE: Dict[str, Tuple[float, float, float]] = {
    "category": (0.0, 1.0, 0.6), "colour": (0.0, 1.0, 1.0), "size": (0.15, 0.25, 1.0),
    "position": (0.15, 0.3, 1.2), "multi": (0.25, 0.2, 0.8), "relation": (0.35, 0.4, 1.5)}


def kind_weight(kind: str, d: float) -> float:
    start, w0, w1 = KIND_SCHEDULE[kind]
    return 0.0 if d < start else w0 + (w1 - w0) * (d - start) / (1.0 - start)


class ExpressionWriter:
    """Chooses and words expressions in one style, drawing every random choice from the shared `rng`."""

    def __init__(self, rng: np.random.Generator, style: str):
        self.rng, self._voc = rng, VOCAB[style]

    def select(self, cands: Dict[str, List[Cand]], objects: List[SceneObject], d: float,
               k_max: int) -> List[SceneSample]:
        """Pick up to k_max candidates with distinct target sets, kinds weighted by difficulty."""
        rng, out, used = self.rng, [], set()
        while len(out) < k_max:
            avail = [k for k in KINDS if cands.get(k)]
            if not avail:
                break
            w = np.array([kind_weight(k, d) for k in avail])
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

    def _phrase(self, c: Cand, objects: List[SceneObject]) -> str:
        """Render a candidate with the style's templates and synonyms."""
        V, pick = self._voc, self._pick
        noun = pick(V["nouns"][c.cat])
        cnoun = f"{c.colour} {noun}" if c.colour and c.kind == "multi" else noun
        slots = {"the": "the " if self.rng.random() < V["the_prob"] else "", "noun": noun, "pl": plural(noun),
                 "cnoun": cnoun, "cpl": plural(cnoun), "colour": c.colour,
                 "num": NUMBERS.get(len(c.targets), str(len(c.targets)))}
        key = c.key
        if c.kind == "position" and key == "orient":
            adjs, advs = V["orient"][c.extra]
            slots.update(orient=pick(adjs), orient_adv=pick(advs))
        elif c.kind == "position":
            v, h, _, _ = REGIONS[c.extra]
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
