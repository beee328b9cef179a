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

Modules, in the order a scene is made: `scene` (the public types), `styles` and `vocabulary` (the per-style
tables), `shapes` (object shapes), `canvas` (the part-index drawing surface), `layout` (step 1), `masks` (visible
masks from the owner map), `describe` (the unambiguity rules of step 3), `expressions` (kind weighting and
wording), `composite` (step 4), `generator` (`SceneGenerator`, one shared random generator through all steps) and
`dataset` (`write_dataset`).
"""
from __future__ import annotations

from .dataset import write_dataset
from .generator import SceneGenerator
from .scene import KINDS, STYLES, Scene, SceneObject, SceneSample

__all__ = ["KINDS", "STYLES", "Scene", "SceneGenerator", "SceneObject", "SceneSample", "write_dataset"]
