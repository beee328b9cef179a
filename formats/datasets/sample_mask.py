"""The mask of any sample, whatever its layout: `load_sample_mask`.

Plain mask files (interchange, RefSegRS/RISBench) and ``INSTANCES#ann=<id>`` masks inside a COCO file (RRSIS-D)
both come back as H x W bool.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, MutableMapping, Optional, Union

import numpy as np

from formats.datasets.coco_instances import annotation_mask, load_instances, parse_ann_mask_path
from formats.datasets.sample import PathLike, Sample
from formats.images import load_mask


def load_sample_mask(sample: Union[Sample, PathLike], cache: Optional[MutableMapping[str, Any]] = None) -> np.ndarray:
    """The mask of a sample (or a mask path) as an H x W bool array.

    Plain paths go through formats.images.load_mask (any non-zero pixel is target). INSTANCES#ann=<id> paths are
    decoded from the COCO file, parsed once per file and kept in `cache` (a dict you own) or, when None, in a
    small module-level cache.
    """
    mask = sample.mask if isinstance(sample, Sample) else sample
    ref = parse_ann_mask_path(mask)
    if ref is None:
        return load_mask(Path(mask))
    instances, ann_id = ref
    return annotation_mask(load_instances(instances, cache), ann_id, str(instances))
