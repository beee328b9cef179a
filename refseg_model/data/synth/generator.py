"""The scene generator: one ``np.random.default_rng(seed)`` drives layout, expressions and compositing in turn,
so a seed fixes the whole sequence of scenes."""
from __future__ import annotations

import numpy as np

from .composite import Compositor
from .describe import Stat, candidates
from .expressions import ExpressionWriter, kind_weight
from .layout import SceneLayout
from .masks import visible_objects
from .scene import KINDS, STYLES, Scene


class SceneGenerator:
    """Deterministic stream of synthetic scenes: `SceneGenerator(128, "default", seed).scene(difficulty)`."""

    def __init__(self, size: int = 128, style: str = "default", seed: int = 0):
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, not {style!r}")
        if size < 48:
            raise ValueError("size must be at least 48 pixels")
        self.size, self.style, self.seed = int(size), style, seed
        self.rng = np.random.default_rng(seed)  # shared by the three stages below, in this order per scene
        self._layout = SceneLayout(self.rng, self.size, style)
        self._writer = ExpressionWriter(self.rng, style)
        self._compositor = Compositor(self.rng, self.size)

    def scene(self, difficulty: float = 1.0, max_expressions: int = 3) -> Scene:
        """One scene with 1..max_expressions unambiguous expressions.

        difficulty in [0, 1]: 0 = 2-3 objects, category / colour expressions only; 1 = up to 10 objects and all
        expression kinds. Returns a Scene whose image is size x size x 3 uint8 and masks size x size bool.
        """
        d = float(min(max(difficulty, 0.0), 1.0))
        kinds = {k for k in KINDS if kind_weight(k, d) > 0}
        for _ in range(200):
            built = self._layout.build(d)
            objects, orients = visible_objects(built, self.size)
            if len(objects) < 2:
                continue
            stats = [Stat(o, r, self.size) for o, r in zip(objects, orients)]
            samples = self._writer.select(candidates(stats, kinds), objects, d, max(1, int(max_expressions)))
            if samples:
                return Scene(self._compositor.composite(built), samples, objects)
        raise RuntimeError("could not generate a describable scene")  # pragma: no cover
