"""The project's interchange layout: reader and writers.

    DIR/annotations.jsonl   one JSON object per line:
        {"image": "images/x.png", "mask": "masks/y.png", "expression": "...", "split": "train|val|test"}
    paths relative to DIR; masks are 8-bit with 255 = target (any non-zero counts as target when read).

`read_interchange` reads it; `write_annotations` writes the annotation file of records already in place (what
generators of new data sets use); `write_interchange` writes samples of any layout, copying their images and
masks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from formats.datasets.sample import SPLITS, DatasetFormatError, PathLike, Sample
from formats.datasets.sample_mask import load_sample_mask
from formats.datasets.writing import copy_image
from formats.images import save_mask

ANNOTATIONS = "annotations.jsonl"


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


def write_interchange(samples: Iterable[Sample], out_root: PathLike) -> Path:
    """Write samples in the interchange layout: images copied to images/, masks as 0/255 PNG in masks/.

    Works for every sample kind (plain mask files and INSTANCES#ann= masks). Returns DIR/annotations.jsonl.
    """
    out_root = Path(out_root)
    (out_root / "images").mkdir(parents=True, exist_ok=True)
    (out_root / "masks").mkdir(parents=True, exist_ok=True)
    image_names: Dict[str, str] = {}
    mask_names: Dict[str, str] = {}
    cache: Dict[str, Any] = {}
    records = []
    for k, s in enumerate(samples):
        if s.split not in SPLITS:
            raise ValueError(f"sample {k}: split {s.split!r} is not one of {SPLITS}")
        ik, mk = str(s.image), str(s.mask)
        if ik not in image_names:
            dst = copy_image(Path(s.image), out_root / "images" / f"{len(image_names):06d}")
            image_names[ik] = f"images/{dst.name}"
        if mk not in mask_names:
            name = f"masks/{len(mask_names):06d}.png"
            save_mask(load_sample_mask(s, cache), out_root / name)
            mask_names[mk] = name
        records.append({"image": image_names[ik], "mask": mask_names[mk], "expression": s.expression,
                        "split": s.split})
    return write_annotations(out_root, records)
