"""Training data streams: batches of (image, mask, expression) per rank, and their resume state.

`FileSource` reads a data set's train split, each rank its own shard of every epoch's permutation; `SynthSource`
generates endless scenes with a difficulty curriculum. Both expose `batch(n, step, total)` and a JSON-serialisable
`state_dict()`; `save_data_state` / `load_data_state` keep that state (and the torch random generator) beside the
training state, so that a resumed run sees the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from formats.datasets.sample import Sample
from formats.images import load_image

from .augment import random_flip, random_zoom


class FileSource:
    """Batches from samples on disk; each rank reads its own shard of every epoch's permutation."""

    def __init__(self, samples: Sequence[Sample], size: int, augment: bool, seed: int, rank: int, world: int,
                 zoom_frac: float = 0.0):
        if not samples:
            raise ValueError("no training samples")
        self.samples, self.size, self.augment, self.zoom_frac = list(samples), size, augment, zoom_frac
        self.rng = np.random.default_rng(seed + 1000 * rank)
        self.perm_rng = np.random.default_rng(seed)  # same permutation on every rank
        self.rank, self.world = rank, world
        self._order: List[int] = []
        self._cache: Dict[str, np.ndarray] = {}

    def _image(self, path) -> np.ndarray:
        key = str(path)
        img = self._cache.get(key)
        if img is None:
            img = load_image(path)
            if len(self._cache) < 4096:
                self._cache[key] = img
        return img

    def batch(self, n: int, step: int, total: int):
        from formats.datasets.sample_mask import load_sample_mask

        items = []
        for _ in range(n):
            if not self._order:
                perm = self.perm_rng.permutation(len(self.samples))
                self._order = list(perm[self.rank :: self.world]) or list(perm)
            s = self.samples[self._order.pop()]
            image = self._image(s.image)
            mask, expr = load_sample_mask(s, image_shape=image.shape), s.expression  # refuses a mask of another size
            if self.augment:
                image, mask, expr = random_flip(image, mask, expr, self.rng)
            items.append(random_zoom(image, mask, expr, self.rng, self.zoom_frac))
        return items

    def state_dict(self) -> dict:
        """Data order and augmentation generators, JSON-serialisable (saved with the resume state)."""
        return {"rng": self.rng.bit_generator.state, "perm_rng": self.perm_rng.bit_generator.state,
                "order": [int(i) for i in self._order]}

    def load_state_dict(self, st: dict) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.perm_rng.bit_generator.state = st["perm_rng"]
        self._order = [int(i) for i in st["order"]]


class SynthSource:
    """Endless generated scenes; difficulty ramps 0 -> 1 over the first `curriculum_frac` of training."""

    def __init__(self, style: str, size: int, curriculum_frac: float, seed: int, rank: int, zoom_frac: float = 0.0):
        from .synth import SceneGenerator

        self.gen = SceneGenerator(size=size, style=style, seed=seed * 7919 + rank + 1)
        self.curriculum_frac, self.zoom_frac = curriculum_frac, zoom_frac
        self.rng = np.random.default_rng(seed + 17 * rank)

    def difficulty(self, step: int, total: int) -> float:
        if self.curriculum_frac <= 0:
            return 1.0
        return float(min(1.0, step / max(1.0, self.curriculum_frac * total)))

    def batch(self, n: int, step: int, total: int):
        items = []
        while len(items) < n:
            # one expression per scene per batch keeps the in-batch contrastive negatives meaningful
            scene = self.gen.scene(difficulty=self.difficulty(step, total), max_expressions=1)
            for s in scene.samples[:1]:
                items.append(random_zoom(*random_flip(scene.image, s.mask, s.expression, self.rng), self.rng,
                                         self.zoom_frac))
        return items

    def state_dict(self) -> dict:
        return {"gen": self.gen.rng.bit_generator.state, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st: dict) -> None:
        self.gen.rng.bit_generator.state = st["gen"]
        self.rng.bit_generator.state = st["rng"]


def synth_val_samples(style: str, size: int, n: int, seed: int = 123_456):
    """A fixed validation set of generated (image, mask, expression) at full difficulty."""
    from .synth import SceneGenerator

    gen = SceneGenerator(size=size, style=style, seed=seed)
    out = []
    while len(out) < n:
        scene = gen.scene(difficulty=1.0, max_expressions=3)
        out.extend((scene.image, s.mask, s.expression) for s in scene.samples)
    return out[:n]


def save_data_state(state_dir: Path, rank: int, step: int, src) -> None:
    """This rank's data order and generators (numpy and torch) after `step` steps, written atomically."""
    path = state_dir / f"data-rank{rank}.json"
    state_dir.mkdir(parents=True, exist_ok=True)
    torch_rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    path.with_suffix(".tmp").write_text(json.dumps({"step": step, "source": src.state_dict(), "torch": torch_rng}))
    os.replace(path.with_suffix(".tmp"), path)


def load_data_state(state_dir: Path, rank: int, step: int, src) -> bool:
    """Restore what `save_data_state` wrote at `step`; False (nothing changed) if it is missing or from another
    step (e.g. a kill between this file and state.pt)."""
    path = state_dir / f"data-rank{rank}.json"
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if st.get("step") != step:
        return False
    src.load_state_dict(st["source"])
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(st["torch"]), dtype=np.uint8).copy()))
    return True
