"""The one image loader of the project: images to RGB uint8, masks to bool.

Every reader (data sets, predictor, workers) goes through these functions so that mode conversion,
decompression-bomb limits and error messages are the same everywhere.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

ImageSource = Union[str, Path, bytes, "np.ndarray", Image.Image]

# PIL's own bomb check warns at 89 Mpx and raises at 2x that; we raise at a documented limit instead.
MAX_IMAGE_PIXELS = 400_000_000
Image.MAX_IMAGE_PIXELS = None  # we enforce MAX_IMAGE_PIXELS ourselves, with a clear message


class ImageLoadError(ValueError):
    """The bytes or file could not be decoded as an image we can segment."""


def _open(source: ImageSource) -> Image.Image:
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


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    lo, hi = np.nanpercentile(arr, 2), np.nanpercentile(arr, 98)
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((arr - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def load_image(source: ImageSource) -> np.ndarray:
    """Load an image as an RGB array.

    Returns:
        np.ndarray: H x W x 3, uint8. Grey, paletted, 16-bit and alpha images are converted; 16-bit and float
        data are stretched to 8-bit with a 2-98 percentile stretch.
    """
    if isinstance(source, np.ndarray):
        arr = source
    else:
        img = _open(source)
        try:
            if img.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "1", "L"):
                img = img.convert("RGB")
            arr = np.asarray(img)
        except Exception as exc:  # truncated files fail at decode time, not at open time
            raise ImageLoadError(f"cannot decode image: {exc}") from exc
    if arr.ndim == 2:
        arr = _to_uint8(arr)
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif arr.shape[2] >= 4:
            arr = arr[:, :, :3]
        elif arr.shape[2] == 2:
            arr = np.repeat(arr[:, :, :1], 3, axis=2)
        arr = _to_uint8(arr)
    else:
        raise ImageLoadError(f"unsupported image array of shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError("image has zero size")
    return np.ascontiguousarray(arr)


def load_mask(source: ImageSource) -> np.ndarray:
    """Load a binary mask: any non-zero pixel is target.

    Returns:
        np.ndarray: H x W, bool.
    """
    if isinstance(source, np.ndarray):
        arr = source
    else:
        img = _open(source)
        try:
            arr = np.asarray(img.convert("L") if img.mode not in ("L", "I", "I;16", "F", "1") else img)
        except Exception as exc:
            raise ImageLoadError(f"cannot decode mask: {exc}") from exc
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def save_mask(mask: np.ndarray, path: Union[str, Path]) -> None:
    """Write a mask as an 8-bit PNG with 255 = target (the interchange convention)."""
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L").save(path)
