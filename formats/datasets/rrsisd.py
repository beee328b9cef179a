"""The RRSIS-D layout (RMSIN's RefCOCO-style layout): reader and writer.

    ROOT/refs(unc).p            pickle: list of refs {ref_id, ann_id, image_id, split, sentences, category_id,
                                file_name}; sentences [{sent, raw, tokens, sent_id}]; one sample per sentence
    ROOT/instances.json         COCO: images [{id, file_name, width, height}], annotations [{id, image_id,
                                segmentation, bbox, area, category_id, iscrowd}], categories
    ROOT/images/rrsisd/JPEGImages/<file_name>   (also accepted: ROOT/JPEGImages/, ROOT/images/)

RMSIN's own tree (``refer/data/rrsisd/refs(unc).p`` next to ``refer/data/images/rrsisd/JPEGImages``) is also
accepted with ROOT = ``refer/data``. Segmentations are COCO polygons, or COCO RLE (uncompressed list counts or
compressed string counts, column-major), or a list of RLE dicts (the form RMSIN's refer.py decodes); a list of
several parts is their union (formats.datasets.coco_masks).

The refs pickle is untrusted and read by formats.datasets.refs_pickle, which refuses every global.

Masks live inside instances.json, so RRSIS-D samples carry ``mask = ROOT/instances.json#ann=<ann_id>``
(formats.datasets.coco_instances); read any sample's mask with `formats.datasets.sample_mask.load_sample_mask`,
which handles both this form and plain mask files. See docs/model.md sections 1.7 and 7.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from formats.datasets.coco_instances import ann_mask_path, load_instances
from formats.datasets.coco_masks import rle_encode
from formats.datasets.refs_pickle import load_refs_pickle
from formats.datasets.sample import SPLITS, DatasetFormatError, PathLike, Sample, check_split
from formats.datasets.sample_mask import load_sample_mask
from formats.datasets.writing import atomic_write, clean_expression, copy_image
from formats.images import load_image

REFS_FILE = "refs(unc).p"
INSTANCES_FILE = "instances.json"
RRSISD_IMAGE_DIRS = (("images", "rrsisd", "JPEGImages"), ("JPEGImages",), ("images",))


def _locate_rrsisd(root: Path) -> Tuple[Path, Path]:
    """(annotation folder holding refs(unc).p and instances.json, image folder)."""
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a directory")
    ann_dir = root
    if not (root / REFS_FILE).is_file() and (root / "rrsisd" / REFS_FILE).is_file():
        ann_dir = root / "rrsisd"  # RMSIN's refer/data tree
    for name in (REFS_FILE, INSTANCES_FILE):
        if not (ann_dir / name).is_file():
            raise DatasetFormatError(f"{ann_dir / name} not found: not an RRSIS-D layout")
    bases = [ann_dir] if ann_dir == root else [ann_dir, root]
    candidates = [base.joinpath(*parts) for base in bases for parts in RRSISD_IMAGE_DIRS]
    for cand in candidates:
        if cand.is_dir():
            return ann_dir, cand
    raise DatasetFormatError(f"{root}: no image folder (looked for "
                             f"{', '.join(str(c.relative_to(root)) for c in candidates)})")


def read_rrsisd(root: PathLike, split: Optional[str] = None) -> List[Sample]:
    """Read an RRSIS-D tree: one Sample per sentence of each ref, in refs order.

    The expression is the sentence's "raw" text (what LAVT/RMSIN feed the text encoder), else its "sent".
    Sample.mask is ``<annotation folder>/instances.json#ann=<ann_id>``; read it with `load_sample_mask`.
    """
    check_split(split)
    root = Path(root)
    ann_dir, image_dir = _locate_rrsisd(root)
    refs_path, instances_path = ann_dir / REFS_FILE, ann_dir / INSTANCES_FILE
    refs = load_refs_pickle(refs_path)
    index = load_instances(instances_path)
    samples: List[Sample] = []
    missing: List[str] = []
    for k, ref in enumerate(refs):
        where = f"{refs_path}: ref #{k}"
        try:
            sp, ann_id, sentences = ref["split"], str(ref["ann_id"]), ref["sentences"]
        except KeyError as exc:
            raise DatasetFormatError(f"{where}: missing key {exc}") from exc
        if sp not in SPLITS:
            raise DatasetFormatError(f"{where}: split {sp!r} is not one of {SPLITS}")
        if split is not None and sp != split:
            continue
        ann = index["anns"].get(ann_id)
        if ann is None:
            raise DatasetFormatError(f"{where}: ann_id {ann_id} not in {instances_path}")
        image = index["images"].get(str(ann.get("image_id", ref.get("image_id"))))
        file_name = image.get("file_name") if image else ref.get("file_name")
        if not file_name:
            raise DatasetFormatError(f"{where}: no image file name for image {ref.get('image_id')}")
        image_path = image_dir / file_name
        if not image_path.is_file():
            missing.append(str(file_name))
        if not isinstance(sentences, list):
            raise DatasetFormatError(f"{where}: 'sentences' is not a list")
        for j, sent in enumerate(sentences):
            text = (sent.get("raw") or sent.get("sent")) if isinstance(sent, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DatasetFormatError(f"{where}: sentence {j} has no 'raw' or 'sent' text")
            samples.append(Sample(image_path, ann_mask_path(instances_path, ann_id), text.strip(), sp))
    if missing:
        raise DatasetFormatError(f"{image_dir}: {len(missing)} image file(s) referenced by the refs are missing, "
                                 f"e.g. {', '.join(sorted(set(missing))[:5])}")
    return samples


def write_rrsisd(samples: Iterable[Sample], out_root: PathLike, compressed: bool = True) -> Path:
    """Write samples as an RRSIS-D tree that RMSIN/LAVT's refer.py and this module's reader both load.

    * images/rrsisd/JPEGImages/<image_id:05d><ext>: each distinct image copied byte for byte;
    * instances.json: one image entry per image (real width/height), one annotation per distinct (image, mask)
      with ``segmentation = [RLE]`` (compressed string counts by default, the form pycocotools decodes; with
      compressed=False, uncompressed list counts), exact bbox and area, category 1 "object";
    * refs(unc).p: pickle protocol 2 of builtins only, one ref per (image, mask, split) holding its sentences
      (sent = lower-cased whitespace-joined tokens, raw = the expression, tokens, sent_id) and "sent_ids".

    Mask pixels round-trip exactly (RLE is lossless). Returns out_root.
    """
    out_root = Path(out_root)
    img_dir = out_root.joinpath(*RRSISD_IMAGE_DIRS[0])
    img_dir.mkdir(parents=True, exist_ok=True)
    images: Dict[str, Dict[str, Any]] = {}
    anns: Dict[Tuple[str, str], Dict[str, Any]] = {}
    refs: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    cache: Dict[str, Any] = {}
    sent_id = 0
    for k, s in enumerate(samples):
        if s.split not in SPLITS:
            raise ValueError(f"sample {k}: split {s.split!r} is not one of {SPLITS}")
        expr = clean_expression(s.expression, f"sample {k}")
        ik, mk = str(s.image), str(s.mask)
        if ik not in images:
            iid = len(images) + 1
            h, w = load_image(Path(s.image)).shape[:2]
            dst = copy_image(Path(s.image), img_dir / f"{iid:05d}")
            images[ik] = {"id": iid, "file_name": dst.name, "width": int(w), "height": int(h)}
        image = images[ik]
        if (ik, mk) not in anns:
            mask = load_sample_mask(s, cache)
            ys, xs = np.nonzero(mask)
            bbox = ([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                    if xs.size else [0, 0, 0, 0])
            anns[(ik, mk)] = {"id": len(anns) + 1, "image_id": image["id"],
                              "segmentation": [rle_encode(mask, compressed)], "bbox": bbox, "area": int(xs.size),
                              "category_id": 1, "iscrowd": 0}
        ann = anns[(ik, mk)]
        if (ik, mk, s.split) not in refs:
            refs[(ik, mk, s.split)] = {"ref_id": len(refs) + 1, "ann_id": ann["id"], "image_id": image["id"],
                                       "split": s.split, "sentences": [], "sent_ids": [], "category_id": 1,
                                       "file_name": image["file_name"]}
        ref = refs[(ik, mk, s.split)]
        sent_id += 1
        tokens = expr.split()
        ref["sentences"].append({"sent": " ".join(tokens).lower(), "raw": expr, "tokens": tokens,
                                 "sent_id": sent_id})
        ref["sent_ids"].append(sent_id)
    coco = {"images": list(images.values()), "annotations": list(anns.values()),
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
    atomic_write(out_root / INSTANCES_FILE, json.dumps(coco).encode("utf-8"))
    atomic_write(out_root / REFS_FILE, pickle.dumps(list(refs.values()), protocol=2))
    return out_root
