"""Which split (train / val / test) a sample belongs to: one module, two rules.

* `stable_splits` -- for data that grows (a Label Studio project): each id's side comes from a hash of
  (namespace, id), so it never changes as ids are added. A model is then never scored on ids it, or a model it
  descends from, trained on; an export of the grown project keeps every earlier sample on its side.
* `counted_splits` -- for a data set generated once (synthetic scenes): exact counts from the fractions, then a
  seeded shuffle.
Both give every split with a positive fraction at least one sample when there are enough samples.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Hashable, List, Sequence

import numpy as np

from .sample import SPLITS


def _fractions(fractions: Sequence[float], k: int) -> np.ndarray:
    f = np.asarray(fractions, dtype=float)
    if f.shape != (k,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be {k} non-negative numbers, got {list(fractions)}")
    return f / f.sum()


def unit_hash(namespace: str, key: Hashable) -> float:
    """A number in [0, 1) fixed by (namespace, key)."""
    digest = hashlib.blake2b(f"{namespace}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def stable_splits(namespace: str, ids: Sequence[Hashable], fractions: Sequence[float],
                  names: Sequence[str] = SPLITS) -> Dict[Hashable, str]:
    """{id: split name}: id goes to the split whose share of [0, 1) holds unit_hash(namespace, id).

    An empty split with a positive fraction takes the id whose hash lies nearest to its share, from a split that
    has more than one id (so tiny sets still have every wanted split; only those few ids can move later)."""
    f = _fractions(fractions, len(names))
    hi = np.cumsum(f)
    lo = hi - f
    h = {i: unit_hash(namespace, i) for i in ids}
    out = {i: names[min(int(np.searchsorted(hi, u, side="right")), len(names) - 1)] for i, u in h.items()}
    for k, name in enumerate(names):
        if f[k] <= 0 or name in out.values():
            continue
        counts = {n: 0 for n in names}
        for n in out.values():
            counts[n] += 1
        donors = [i for i in out if counts[out[i]] > 1]
        if not donors:
            break
        best = min(donors, key=lambda i: max(lo[k] - h[i], h[i] - hi[k], 0.0))
        out[best] = name
    return out


def split_counts(n: int, fractions: Sequence[float], k: int = len(SPLITS)) -> np.ndarray:
    """How many of `n` samples go to each split: rounded shares, >= 1 per positive fraction when n allows."""
    f = _fractions(fractions, k)
    counts = np.floor(f * n + 0.5).astype(int)
    if n >= (f > 0).sum():
        counts[(f > 0) & (counts == 0)] = 1
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    counts[int(np.argmax(f))] += n - counts.sum()
    return counts


def counted_splits(n: int, fractions: Sequence[float], seed: int) -> List[str]:
    """Split names for samples 0..n-1: `split_counts`, then a shuffle seeded by `seed`."""
    names = np.repeat(np.array(SPLITS), split_counts(n, fractions))
    return list(names[np.random.default_rng([seed, 7919]).permutation(n)])
