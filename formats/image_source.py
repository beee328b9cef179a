"""What an image source is, and how one is opened safely.

* `ImageSource`: a path, bytes, an array or a PIL image: what every loader of the project accepts.
* `ImageLoadError`: raised by every loader for data that is not an image we can segment.
* `MAX_IMAGE_PIXELS`: the decompression-bomb limit, enforced here (PIL's own check is switched off so that the
  message is ours and the same everywhere).
* `is_tiff(source)`: the TIFF signature check (classic and BigTIFF) that routes a source to the GeoTIFF reader.
* `open_image(source)`: PIL's lazy view of a source, with the pixel limit checked before anything is decoded.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

ImageSource = Union[str, Path, bytes, "np.ndarray", Image.Image]

# PIL's own bomb check warns at 89 Mpx and raises at 2x that; we raise at a documented limit instead.
MAX_IMAGE_PIXELS = 400_000_000
Image.MAX_IMAGE_PIXELS = None  # we enforce MAX_IMAGE_PIXELS ourselves, with a clear message


class ImageLoadError(ValueError):
    """The bytes or file could not be decoded as an image we can segment."""


TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def is_tiff(source: Any) -> bool:
    """Whether `source` (bytes or a path) starts with a TIFF signature (classic or BigTIFF)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:4]) in TIFF_MAGICS
    if isinstance(source, (str, Path)):
        try:
            with open(source, "rb") as fh:
                return fh.read(4) in TIFF_MAGICS
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return False  # let the normal path raise its usual error
    return False


def open_image(source: ImageSource) -> Image.Image:
    """PIL's (lazy) image for a source; ImageLoadError for undecodable data or more than MAX_IMAGE_PIXELS."""
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, (bytes, bytearray)):
            img = Image.open(io.BytesIO(source))
        else:
            img = Image.open(Path(source))
    except FileNotFoundError:
        raise
    except Exception as exc:  # PIL raises several unrelated types for bad data
        raise ImageLoadError(f"cannot decode image: {exc}") from exc
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageLoadError(f"image of {w}x{h} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels")
    return img
