"""The drawing surface of one scene and what has been placed on it.

Layers are drawn with PIL ``ImageDraw`` into one 8-bit *part-index* image; a part table maps each index to an RGB
colour and to its owning object, so one look-up yields both the picture and the owner map from which visible
masks are read. Drop shadows go into a separate shade image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw


class Canvas:
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
class Placed:
    """One object as laid out: category, colour name, the pixel box that contains it, centre and rotation."""

    cat: str
    colour: str
    box: Tuple[int, int, int, int]  # pixel region containing the object (x0, y0, x1, y1)
    centre: Tuple[float, float]
    angle: float = 0.0
    orient: str = ""  # roads: "h" | "v"


@dataclass
class Built:
    """A laid-out scene: the canvas, the placed objects (index = owner id), the ground colour, field stripes."""

    canvas: Canvas
    placed: List[Placed]
    ground: np.ndarray  # 3, float
    textures: List[Tuple[int, Tuple[int, int, int, int], float, float, float]]  # (owner, box, angle, period, amp)
    lab: Optional[np.ndarray] = None  # H x W uint8 part indices
    owner_map: Optional[np.ndarray] = None  # H x W int16 object index, -1 = background
