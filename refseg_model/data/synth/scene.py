"""What a synthetic scene is: an image, the objects that can be referred to, and (expression, mask) samples."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

STYLES = ("default", "shifted")
KINDS = ("category", "colour", "size", "position", "relation", "multi")


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
