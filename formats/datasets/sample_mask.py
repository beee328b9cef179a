"""The mask of any sample, whatever its layout: `load_sample_mask`, checked against its image's size.

Plain mask files (interchange, RefSegRS/RISBench) and ``INSTANCES#ann=<id>`` masks inside a COCO file (RRSIS-D)
both come back as H x W bool. A sample's mask must have its image's size: `check_mask_size` refuses one that does
not (DatasetFormatError naming the sample, its image and both sizes); nothing is resized.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, MutableMapping, Optional, Sequence, Union

import numpy as np

from formats.datasets.coco_instances import annotation_mask, load_instances, parse_ann_mask_path
from formats.datasets.sample import DatasetFormatError, PathLike, Sample
from formats.images import image_dimensions, load_mask


def load_sample_mask(sample: Union[Sample, PathLike], cache: Optional[MutableMapping[str, Any]] = None, *,
                     image_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """The mask of a sample (or a mask path) as an H x W bool array.

    Plain paths go through formats.images.load_mask (any non-zero pixel is target). INSTANCES#ann=<id> paths are
    decoded from the COCO file, parsed once per file and kept in `cache` (a dict you own) or, when None, in a
    small module-level cache.

    For a Sample the mask's size is checked against its image (`check_mask_size`): against `image_shape`
    ((height, width, ...) of the already loaded image) when given, else against the image file's header. A bare
    mask path has no image to compare with and is not checked.
    """
    mask_path = sample.mask if isinstance(sample, Sample) else sample
    ref = parse_ann_mask_path(mask_path)
    if ref is None:
        mask = load_mask(Path(mask_path))
    else:
        instances, ann_id = ref
        mask = annotation_mask(load_instances(instances, cache), ann_id, str(instances))
    if isinstance(sample, Sample):
        check_mask_size(sample, mask, image_shape)
    return mask


def check_mask_size(sample: Sample, mask: np.ndarray, image_shape: Optional[Sequence[int]] = None) -> None:
    """Raise DatasetFormatError if `mask` (H x W) is not the size of the sample's image.

    `image_shape`: (height, width, ...) of the loaded image; None reads the size from the image file's header
    (nothing decoded). An image file that does not exist is not checked here: loading it fails on its own.
    """
    if image_shape is not None:
        ih, iw = int(image_shape[0]), int(image_shape[1])
    else:
        if not Path(sample.image).is_file():
            return
        iw, ih = image_dimensions(Path(sample.image))
    mh, mw = mask.shape[:2]
    if (mh, mw) != (ih, iw):
        raise DatasetFormatError(
            f"sample {sample.expression!r} [{sample.split}]: mask {sample.mask} is {mw}x{mh} but image {sample.image} "
            f"is {iw}x{ih} (width x height); a mask must have its image's size")
