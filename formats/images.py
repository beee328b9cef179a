"""The one image loader of the project: images to RGB uint8, masks to bool, masks written as PNG.

Every reader (data sets, predictor, workers, the web service) goes through these functions so that mode
conversion, decompression-bomb limits and error messages are the same everywhere.

* `load_image(source)` -> H x W x 3 uint8 for PNG / JPEG / WebP / TIFF / GeoTIFF / COG (and arrays, PIL images).
  TIFFs go through `RasterReader` (bands 1-3 or 1; bands that are not 8-bit get a 2-98 % percentile stretch over
  valid pixels; nodata -> 0), and through PIL for what tifffile does not turn into RGB (palette, YCbCr/JPEG,
  CMYK, bilevel; 8-bit JPEG-in-TIFF without `imagecodecs`).
* `load_mask(source)` -> H x W bool (any non-zero pixel is target); `save_mask(mask, path)`: 8-bit PNG, 255 = target.
* `image_dimensions(source)` -> (width, height) from the header alone.

Georeferenced loading (bands, stretch, georeference, nodata mask) is `formats.raster.load_raster`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np
from PIL import Image

from formats.image_source import ImageLoadError, ImageSource, is_tiff, open_image
from formats.raster_reader import RasterReader


def image_dimensions(source: ImageSource) -> Tuple[int, int]:
    """(width, height) from the file header alone (nothing decoded): lets a service refuse a huge image before
    it holds it in memory. Raises ImageLoadError for data that is not an image."""
    if isinstance(source, np.ndarray):
        return int(source.shape[1]), int(source.shape[0])
    if isinstance(source, Image.Image):
        return source.size
    if is_tiff(source):  # the same reader load_image uses: TIFFs PIL cannot open still load
        try:
            with RasterReader(source) as reader:
                return reader.width, reader.height
        except ImageLoadError as exc:
            if "exceeds the limit" in str(exc):
                raise
            # codecs tifffile cannot read (e.g. JPEG-in-TIFF): load_image falls back to PIL, and so do we
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)) as img:
            return img.size
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ImageLoadError(f"cannot decode image: {exc}") from exc


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
    elif not isinstance(source, Image.Image) and is_tiff(source):
        arr = _load_tiff_rgb(source)
    else:
        img = open_image(source)
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
        pil_first = isinstance(source, Image.Image) or not is_tiff(source)
        img = open_image(source) if pil_first else _open_tiff_with_pil(source)
        if img is None:  # a TIFF that PIL cannot read (e.g. 16-bit multi-band, LZW without libtiff): band 1
            with RasterReader(source) as reader:
                arr = reader.read_window(bands=[1])[..., 0]
        else:
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


_PIL_TIFF_PHOTOMETRICS = (0, 3, 4, 5, 6, 8)  # min-is-white, palette, mask, separated/CMYK, YCbCr, CIELab


def _open_tiff_with_pil(source: Any) -> Optional[Image.Image]:
    """PIL's view of a TIFF (decoded), or None when PIL cannot decode it (size limits still raise)."""
    try:
        img = open_image(source)
    except ImageLoadError as exc:
        if "exceeds the limit" in str(exc):
            raise
        return None
    try:
        img.load()
    except Exception:
        return None
    return img


def _load_tiff_rgb(source: Any) -> np.ndarray:
    """load_image for TIFF sources: tifffile (bands 1-3 or 1, auto stretch, nodata -> 0); PIL for the photometric
    interpretations and codecs that tifffile alone does not turn into RGB (palette, YCbCr/JPEG, CMYK, bilevel)."""
    reader = None
    try:
        reader = RasterReader(source)
        if reader.photometric in _PIL_TIFF_PHOTOMETRICS or reader.dtype == bool:
            raise _UsePIL()
        bands = [1, 2, 3] if reader.count >= 3 else [1]
        st = reader.stretch_params(bands, "auto")
        rgb, _ = reader.read_rgb(None, bands, st)
        return rgb
    except _UsePIL:
        pass
    except ImageLoadError as exc:
        if "exceeds the limit" in str(exc):
            raise
        try:  # e.g. JPEG-in-TIFF without imagecodecs: PIL (libtiff) may still decode it
            pil = _open_tiff_with_pil(source)
        except ImageLoadError:
            pil = None
        if pil is None:
            raise
        return load_image(pil)
    finally:
        if reader is not None:
            reader.close()
    img = open_image(source)
    try:
        return load_image(img)
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(f"cannot decode image: {exc}") from exc


class _UsePIL(Exception):
    pass
