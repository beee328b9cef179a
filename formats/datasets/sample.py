"""What every data set layout reads and writes: a `Sample`, the split names, and the layout error.

* `Sample(image, mask, expression, split)`: one image-expression-mask triplet.
* `SPLITS` = ("train", "val", "test"); `check_split` refuses any other name.
* `DatasetFormatError`: a data set file that does not follow its documented layout.
* `IncompleteDatasetWarning` / `warn_incomplete`: a published data set read as it is (image or mask files
  missing, an optional split file absent): the readers skip what they cannot read and say so in ONE warning per
  read that counts what was skipped and names a few.
* `PathLike`: what the readers' and writers' path arguments accept.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

PathLike = Union[str, Path]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One image-expression-mask triplet; `image` and `mask` are absolute paths."""

    image: Path
    mask: Path
    expression: str
    split: str = "train"


class DatasetFormatError(ValueError):
    """A data set file that does not follow its documented layout."""


class IncompleteDatasetWarning(UserWarning):
    """A data set read without some of its parts (missing files skipped, an absent split file read as empty)."""


def name_a_few(names: Sequence[str], n: int = 5) -> str:
    """'a, b, c' for up to `n` distinct names (sorted), '..., and K more' beyond."""
    distinct = sorted(set(str(x) for x in names))
    shown = ", ".join(distinct[:n])
    return shown + (f", and {len(distinct) - n} more" if len(distinct) > n else "")


def warn_incomplete(message: str, stacklevel: int = 3) -> None:
    """Emit one IncompleteDatasetWarning (shown by default; `warnings.simplefilter("error", ...)` makes it fatal)."""
    warnings.warn(message, IncompleteDatasetWarning, stacklevel=stacklevel)


def check_split(split: Optional[str]) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")

