"""Ground truth for the scene tests (tests/test_scene_tasks.py and the real-Label-Studio tests/e2e/test_scene_e2e.py):
discs and boxes, many across chip borders (imported as a plain module: tests/conftest.py puts tests/ on sys.path)."""
from __future__ import annotations

import numpy as np


def scene_ground_truth(h: int, w: int, seed: int, objects: int, first_row: int = 0) -> np.ndarray:
    """H x W bool: `objects` discs and boxes at random places whose top rows are >= `first_row`."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(objects):
        r, c = rng.integers(first_row, h), rng.integers(0, w)
        if rng.random() < 0.5:
            gt |= (yy - r) ** 2 + (xx - c) ** 2 < rng.integers(8, 40) ** 2
        else:
            gt[r: r + rng.integers(5, 70), c: c + rng.integers(5, 90)] = True
    return gt
