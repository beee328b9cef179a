"""The project's interchange layout.

    DIR/annotations.jsonl   one JSON object per line:
        {"image": "images/x.png", "mask": "masks/y.png", "expression": "...", "split": "train|val|test"}
    paths relative to DIR; masks are 8-bit with 255 = target (any non-zero counts as target when read).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Union

SPLITS = ("train", "val", "test")
ANNOTATIONS = "annotations.jsonl"


@dataclass(frozen=True)
class Sample:
    """One image-expression-mask triplet; `image` and `mask` are absolute paths."""

    image: Path
    mask: Path
    expression: str
    split: str = "train"


class DatasetFormatError(ValueError):
    """A data set file that does not follow its documented layout."""


def read_interchange(root: Union[str, Path], split: Optional[str] = None) -> List[Sample]:
    """Read DIR/annotations.jsonl; with `split`, keep only that split."""
    root = Path(root)
    ann = root / ANNOTATIONS
    if not ann.is_file():
        raise DatasetFormatError(f"{ann} not found: not an interchange-layout data set")
    samples: List[Sample] = []
    with ann.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                image, mask, expr = rec["image"], rec["mask"], rec["expression"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetFormatError(f"{ann}:{lineno}: bad record ({exc})") from exc
            sp = rec.get("split", "train")
            if sp not in SPLITS:
                raise DatasetFormatError(f"{ann}:{lineno}: split {sp!r} is not one of {SPLITS}")
            if split is not None and sp != split:
                continue
            samples.append(Sample(root / image, root / mask, str(expr), sp))
    return samples


def write_annotations(root: Union[str, Path], records: Iterable[dict]) -> Path:
    """Write records (with paths already relative to `root`) as DIR/annotations.jsonl."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = root / ANNOTATIONS
    tmp = out.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps({k: rec[k] for k in ("image", "mask", "expression", "split")}, ensure_ascii=False))
            fh.write("\n")
    tmp.replace(out)
    return out
