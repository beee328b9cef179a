"""Compositing: part colours over a low-frequency ground texture, field stripes, shadows, a slight blur, exposure
jitter and sensor noise. Runs only once a scene has an expression (it draws from the shared generator too)."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from .canvas import Built


def _interp_matrix(n: int, g: int) -> np.ndarray:
    """n x g bilinear up-sampling matrix."""
    t = np.linspace(0, g - 1, n)
    j = np.minimum(np.floor(t).astype(int), g - 2)
    w = (t - j).astype(np.float32)
    m = np.zeros((n, g), np.float32)
    m[np.arange(n), j], m[np.arange(n), j + 1] = 1 - w, w
    return m


class Compositor:
    """Turns a drawn layout into the final image, drawing every random choice from the shared `rng`."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng, self.size = rng, size
        self._s = self.size / 128.0
        self._up = {g: _interp_matrix(self.size, g) for g in (5, 16)}
        self._yy, self._xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32)

    def _upsample(self, grid: np.ndarray) -> np.ndarray:
        """g x g x c grid -> size x size x c, bilinear."""
        g, c = grid.shape[0], grid.shape[2]
        m = self._up[g]
        rows = (m @ grid.reshape(g, g * c)).reshape(self.size, g, c)
        return (rows.transpose(0, 2, 1) @ m.T).transpose(0, 2, 1)

    def composite(self, built: Built) -> np.ndarray:
        """The scene's final H x W x 3 uint8 image."""
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
