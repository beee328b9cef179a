"""formats.datasets.splits: stable per-id splits (export, fine-tune hold-out) and counted splits (synthetic)."""
from __future__ import annotations

from collections import Counter

import pytest

from formats.datasets.splits import counted_splits, split_counts, stable_splits


def test_stable_splits_keep_every_id_on_its_side_as_ids_are_added():
    first = stable_splits("ns", list(range(50)), (0.6, 0.2, 0.2))
    grown = stable_splits("ns", list(range(50)) + list(range(1000, 1500)), (0.6, 0.2, 0.2))
    assert all(grown[i] == first[i] for i in first)
    shares = Counter(grown.values())
    assert abs(shares["train"] / len(grown) - 0.6) < 0.08 and abs(shares["test"] / len(grown) - 0.2) < 0.08
    assert stable_splits("other", list(range(50)), (0.6, 0.2, 0.2)) != first  # a namespace is its own split


def test_stable_splits_give_each_wanted_split_one_id_when_there_are_enough():
    for n in (3, 4, 5):
        got = stable_splits("tiny", list(range(n)), (0.5, 0.25, 0.25))
        assert set(got.values()) == {"train", "val", "test"}, got
    assert set(stable_splits("tiny", [1, 2], (1.0, 0.0, 0.0)).values()) == {"train"}  # zero fraction: unused


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match="non-negative"):
        stable_splits("x", [1], (0.5, -0.1, 0.6))
    with pytest.raises(ValueError, match="3 non-negative"):
        counted_splits(4, (1.0, 0.0), 0)


def test_counted_splits_have_exact_counts_and_follow_the_seed():
    names = counted_splits(100, (0.8, 0.1, 0.1), seed=3)
    assert Counter(names) == {"train": 80, "val": 10, "test": 10}
    assert names == counted_splits(100, (0.8, 0.1, 0.1), seed=3) != counted_splits(100, (0.8, 0.1, 0.1), seed=4)
    assert list(split_counts(3, (0.98, 0.01, 0.01))) == [1, 1, 1]  # every positive fraction gets one
