"""What every data set layout reads and writes: a `Sample`, the split names, and the layout error.

* `Sample(image, mask, expression, split)`: one image-expression-mask triplet.
* `SPLITS` = ("train", "val", "test"); `check_split` refuses any other name.
* `DatasetFormatError`: a data set file that does not follow its documented layout.
* `PathLike`: what the readers' and writers' path arguments accept.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

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


def check_split(split: Optional[str]) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")

