"""Masks that live inside a COCO instances.json, addressed as ``INSTANCES#ann=<ann_id>``.

* `ann_mask_path` / `parse_ann_mask_path`: build and split such a mask "path" (a real file of that name wins).
* `load_instances`: instances.json parsed once into {"images": {id: image}, "anns": {id: annotation}}, cached per
  file (revalidated against mtime and size) in a small locked module-level cache or in a cache the caller owns.
* `annotation_mask`: an annotation's segmentation decoded at its image's size.
"""
from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, MutableMapping, Optional, Tuple

import numpy as np

from formats.datasets.coco_masks import segmentation_to_mask
from formats.datasets.sample import DatasetFormatError, PathLike

ANN_TAG = "#ann="


_INSTANCES_CACHE: "OrderedDict[str, Any]" = OrderedDict()
_INSTANCES_CACHE_SIZE = 4
_INSTANCES_LOCK = threading.Lock()


def load_instances(path: Path, cache: Optional[MutableMapping[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Parse instances.json once: {"images": {str(id): image}, "anns": {str(id): annotation}}, cached per path.

    The cache entry is keyed by the absolute path and revalidated against the file's mtime and size. The
    module-level cache (cache=None) is guarded by a lock; a caller-owned cache is the caller's to share.
    """
    if cache is None:
        with _INSTANCES_LOCK:
            return _load_instances_into(path, None)
    return _load_instances_into(path, cache)


def _load_instances_into(path: Path, cache: Optional[MutableMapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    key = os.path.abspath(path)
    try:
        st = os.stat(key)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path} not found") from None
    stamp = (st.st_mtime_ns, st.st_size)
    store = _INSTANCES_CACHE if cache is None else cache
    hit = store.get(key)
    if hit is not None and hit[0] == stamp:
        if cache is None:
            _INSTANCES_CACHE.move_to_end(key)
        return hit[1]
    try:
        with open(key, encoding="utf-8") as fh:
            coco = json.load(fh)
        images = {str(im["id"]): im for im in coco["images"]}
        anns = {str(a["id"]): a for a in coco["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetFormatError(f"{path}: not a COCO instances file ({exc!r})") from exc
    index = {"images": images, "anns": anns}
    store[key] = (stamp, index)
    if cache is None:
        while len(_INSTANCES_CACHE) > _INSTANCES_CACHE_SIZE:
            _INSTANCES_CACHE.popitem(last=False)
    return index


def ann_mask_path(instances: PathLike, ann_id: Any) -> Path:
    """The mask "path" of an annotation inside a COCO file: INSTANCES#ann=<ann_id>."""
    return Path(f"{instances}{ANN_TAG}{ann_id}")


def parse_ann_mask_path(mask: PathLike) -> Optional[Tuple[Path, str]]:
    """(instances.json path, ann id) for an INSTANCES#ann=<id> mask path, None for a plain file path."""
    text = str(mask)
    if ANN_TAG not in text or os.path.isfile(text):
        return None
    base, _, ann = text.rpartition(ANN_TAG)
    return Path(base), ann


def annotation_mask(index: Dict[str, Dict[str, Any]], ann_id: str, where: str) -> np.ndarray:
    ann = index["anns"].get(ann_id)
    if ann is None:
        raise DatasetFormatError(f"{where}: no annotation with id {ann_id}")
    image = index["images"].get(str(ann.get("image_id")))
    if image is None:
        raise DatasetFormatError(f"{where}: annotation {ann_id} refers to unknown image {ann.get('image_id')}")
    try:
        return segmentation_to_mask(ann.get("segmentation"), int(image["height"]), int(image["width"]))
    except DatasetFormatError as exc:
        raise DatasetFormatError(f"{where}: annotation {ann_id}: {exc}") from exc
