"""Lazy, bounded-memory reading of a (Geo)TIFF / COG: `RasterReader`.

Only the tiles or strips that a window touches are decoded: `read_window` (raw band values), `read_rgb`
(stretched to uint8, nodata -> 0), `read_overview` (area-averaged over valid pixels, streamed in row blocks) and
`stretch_params` (one set of stretch parameters for the whole scene, from an overview of at most STATS_MAX_SIDE
px). Pure Python (tifffile): 8/16/32-bit integer and 32/64-bit float bands, chunky or planar, tiled or striped,
uncompressed / deflate / LZW / PackBits / LZMA (other codecs such as JPEG-in-TIFF need the optional `imagecodecs`
package). Nodata pixels are those equal to the GDAL_NODATA tag, and non-finite floats.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from formats.georef import TAG_GDAL_NODATA, read_georeference
from formats.image_source import MAX_IMAGE_PIXELS, ImageLoadError
from formats.stretch import DEFAULT_STRETCH, Stretch, compute_stretch, parse_stretch
from formats.tiff_codecs import tifffile_module

STATS_MAX_SIDE = 2048  # percentile statistics come from an overview of at most this side (exact for smaller)
Window = Tuple[int, int, int, int]  # (row0, col0, height, width) in full-resolution pixels


class RasterReader:
    """Lazy, bounded-memory access to a (Geo)TIFF: only the tiles/strips that a window touches are decoded.

        with RasterReader("scene.tif") as r:
            r.height, r.width, r.count, r.dtype, r.georef, r.nodata
            raw = r.read_window((row0, col0, h, w), bands=[4, 3, 2])         # h x w x 3, source dtype
            ov, ov_valid, factor = r.read_overview(1024, bands=[4, 3, 2])     # area-averaged float32
            st = r.stretch_params([4, 3, 2], (2, 98))                          # from the overview
            rgb = r.read_rgb((row0, col0, h, w), [4, 3, 2], st)                # uint8, nodata -> 0

    Bands come from the samples of the first image (chunky or planar); COG overview levels are used by
    `read_overview` when they exist.
    """

    def __init__(self, source: Union[str, Path, bytes]) -> None:
        tifffile = tifffile_module()
        try:
            self._tif = tifffile.TiffFile(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray))
                                          else str(source))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ImageLoadError(f"cannot decode TIFF: {exc}") from exc
        try:
            self._init()
        except ImageLoadError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ImageLoadError(f"cannot decode TIFF: {exc}") from exc

    def _init(self) -> None:
        if not len(self._tif.pages):
            raise ImageLoadError("TIFF has no image")
        page = self._tif.pages[0]
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        if self.height <= 0 or self.width <= 0:
            raise ImageLoadError("image has zero size")
        if self.height * self.width > MAX_IMAGE_PIXELS:
            raise ImageLoadError(f"image of {self.width}x{self.height} pixels exceeds the limit of "
                                 f"{MAX_IMAGE_PIXELS} pixels")
        if int(getattr(page, "imagedepth", 1) or 1) != 1:
            raise ImageLoadError("volumetric (3-D) TIFFs are not supported")
        self.count = int(page.samplesperpixel)
        self.dtype = np.dtype(page.dtype) if page.dtype is not None else None
        if self.dtype is None or self.dtype.kind not in "uifb":
            raise ImageLoadError(f"unsupported TIFF sample type {page.dtype} ({page.bitspersample} bits)")
        self.planar = int(page.planarconfig) == 2 and self.count > 1
        self.tiled = bool(page.is_tiled)
        self.seg_h = int(page.tilelength) if self.tiled else int(page.rowsperstrip or self.height)
        self.seg_h = max(1, min(self.seg_h, self.height))
        self.seg_w = int(page.tilewidth) if self.tiled else self.width
        self.n_across = -(-self.width // self.seg_w)
        self.n_down = -(-self.height // self.seg_h)
        self.georef = read_georeference(page)
        self.nodata: Optional[float] = None
        tag = page.tags.get(TAG_GDAL_NODATA)
        if tag is not None:
            text = tag.value.decode() if isinstance(tag.value, bytes) else str(tag.value)
            try:
                self.nodata = float(text.strip().strip("\x00"))
            except ValueError:
                self.nodata = None
        self.photometric = int(page.photometric)
        n_segments = len(page.dataoffsets)
        expected = self.n_across * self.n_down * (self.count if self.planar else 1)
        if n_segments < expected:
            raise ImageLoadError(f"TIFF declares {n_segments} data segments, {expected} expected")

    # -------------------------------------------------------------------------------------- basics
    def __enter__(self) -> "RasterReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._tif.close()

    @property
    def shape(self) -> Tuple[int, int]:
        return self.height, self.width

    def default_bands(self) -> List[int]:
        return [1, 2, 3] if self.count >= 3 else [1]

    def check_bands(self, bands: Optional[Sequence[int]]) -> List[int]:
        bands = list(bands) if bands is not None else self.default_bands()
        for b in bands:
            if not 1 <= b <= self.count:
                raise ImageLoadError(f"band {b} does not exist: the image has {self.count} band(s) (1-based)")
        return bands

    # -------------------------------------------------------------------------------------- windows
    def _segment(self, plane: int, ty: int, tx: int) -> np.ndarray:
        page = self.page
        index = (plane * self.n_down + ty) * self.n_across + tx
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        fh = self._tif.filehandle
        if count == 0 or offset == 0:  # sparse segment: GDAL writes none for all-nodata blocks
            h = min(self.seg_h, self.height - ty * self.seg_h)
            fill = self.nodata if self.nodata is not None and _representable(self.nodata, self.dtype) else 0
            return np.full((h, self.seg_w, 1 if self.planar else self.count), fill, self.dtype)
        fh.seek(offset)
        data = fh.read(count)
        try:
            seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise ImageLoadError(f"cannot decode TIFF segment {index} (compression {page.compression}): {exc}"
                                 + ("; install 'imagecodecs' for this codec" if isinstance(exc, (KeyError, ValueError))
                                    and "imagecodecs" in str(exc) else "")) from exc
        if seg is None:
            raise ImageLoadError(f"cannot decode TIFF segment {index}")
        seg = np.asarray(seg)
        return seg.reshape(seg.shape[-3:])  # h x w x samples

    def read_window(self, window: Optional[Window] = None, bands: Optional[Sequence[int]] = None) -> np.ndarray:
        """Raw band values of a window (row0, col0, h, w) (clipped to the image): h x w x len(bands)."""
        bands = self.check_bands(bands)
        r0, c0, h, w = window if window is not None else (0, 0, self.height, self.width)
        r0, c0 = max(0, int(r0)), max(0, int(c0))
        r1, c1 = min(self.height, r0 + int(h)), min(self.width, c0 + int(w))
        if r1 <= r0 or c1 <= c0:
            raise ValueError(f"window {window} is outside the {self.height}x{self.width} image")
        out = np.empty((r1 - r0, c1 - c0, len(bands)), self.dtype)
        idx = [b - 1 for b in bands]
        for ty in range(r0 // self.seg_h, (r1 - 1) // self.seg_h + 1):
            for tx in range(c0 // self.seg_w, (c1 - 1) // self.seg_w + 1):
                y0, x0 = ty * self.seg_h, tx * self.seg_w
                ys, ye = max(r0, y0), min(r1, y0 + self.seg_h)
                xs, xe = max(c0, x0), min(c1, x0 + self.seg_w)
                if self.planar:
                    for k, b in enumerate(idx):
                        seg = self._segment(b, ty, tx)
                        out[ys - r0: ye - r0, xs - c0: xe - c0, k] = seg[ys - y0: ye - y0, xs - x0: xe - x0, 0]
                else:
                    seg = self._segment(0, ty, tx)
                    out[ys - r0: ye - r0, xs - c0: xe - c0] = seg[ys - y0: ye - y0, xs - x0: xe - x0][..., idx]
        return out

    def valid_mask(self, raw: np.ndarray) -> Optional[np.ndarray]:
        """h x w bool of pixels with data (any band not nodata, all finite); None when everything is valid."""
        invalid = None
        if self.nodata is not None and _representable(self.nodata, raw.dtype):
            invalid = np.all(raw == raw.dtype.type(self.nodata), axis=-1)
        if raw.dtype.kind == "f":
            nan = ~np.all(np.isfinite(raw), axis=-1)
            invalid = nan if invalid is None else (invalid | nan)
        if invalid is None or not invalid.any():
            return None
        return ~invalid

    def read_rgb(self, window: Optional[Window], bands: Sequence[int], stretch: Stretch
                 ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(h x w x 3 uint8 with nodata -> 0, h x w bool nodata mask or None) for a window."""
        raw = self.read_window(window, bands)
        valid = self.valid_mask(raw)
        nodata = None if valid is None else ~valid
        rgb = stretch.apply(raw, nodata)
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        return rgb, nodata

    # -------------------------------------------------------------------------------------- overview
    def overview_factor(self, max_side: int) -> int:
        return max(1, math.ceil(max(self.height, self.width) / max(1, int(max_side))))

    def read_overview(self, max_side: int, bands: Optional[Sequence[int]] = None,
                      max_block_bytes: int = 64 << 20) -> Tuple[np.ndarray, np.ndarray, int]:
        """Area-averaged overview, longest side <= max_side, reading `max_block_bytes` of rows at a time.

        Returns (ceil(H/f) x ceil(W/f) x n float32 means over the valid pixels of each f x f block,
        bool validity of each block (any valid pixel), f). Overview pixel (i, j) covers the full-resolution pixels
        [i*f, (i+1)*f) x [j*f, (j+1)*f). A COG's internal overview level is not used for the values (its
        resampling is unknown); the full-resolution data are streamed once, which bounds memory, not time.
        """
        bands = self.check_bands(bands)
        f = self.overview_factor(max_side)
        oh, ow = -(-self.height // f), -(-self.width // f)
        n = len(bands)
        out = np.zeros((oh, ow, n), np.float32)
        valid_out = np.zeros((oh, ow), bool)
        row_bytes = self.width * n * max(4, self.dtype.itemsize)
        rows = max(f, (max_block_bytes // max(1, row_bytes)) // f * f)
        rows = max(rows, (self.seg_h // f) * f if self.seg_h >= f else f)
        for r0 in range(0, self.height, rows):
            raw = self.read_window((r0, 0, rows, self.width), bands)
            valid = self.valid_mask(raw)
            h = raw.shape[0]
            ph, pw = -(-h // f) * f, ow * f
            vals = np.zeros((ph, pw, n), np.float32)
            vals[:h, : self.width] = raw
            ok = np.zeros((ph, pw), np.float32)
            ok[:h, : self.width] = 1.0 if valid is None else valid
            if valid is not None or raw.dtype.kind == "f":
                vals[ok == 0] = 0.0
            del raw
            sums = (vals * ok[..., None]).reshape(ph // f, f, ow, f, n).sum(axis=(1, 3))
            cnt = ok.reshape(ph // f, f, ow, f).sum(axis=(1, 3))
            i0 = r0 // f
            out[i0: i0 + ph // f] = sums / np.maximum(cnt, 1)[..., None]
            valid_out[i0: i0 + ph // f] = cnt > 0
        return out, valid_out, f

    def stretch_params(self, bands: Optional[Sequence[int]], stretch: Any = "auto") -> Stretch:
        """Stretch parameters from an overview of at most STATS_MAX_SIDE px (exact for images that small).

        One set of parameters for the whole scene, so that windows and tiles of it are stretched alike (no
        seams between tiles from per-tile statistics).
        """
        bands = self.check_bands(bands)
        mode = parse_stretch(stretch) if not isinstance(stretch, tuple) else stretch
        if mode == "none" or (mode == "auto" and self.dtype == np.uint8):
            return compute_stretch(np.zeros((1, 1, len(bands)), self.dtype), None, mode)
        if self.overview_factor(STATS_MAX_SIDE) == 1:
            raw = self.read_window(None, bands)
            return compute_stretch(raw, self.valid_mask(raw), mode)
        ov, valid, _ = self.read_overview(STATS_MAX_SIDE, bands)
        return compute_stretch(ov, valid, mode if mode != "auto" else DEFAULT_STRETCH)


def _representable(value: float, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    if not float(value).is_integer():
        return False
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


def window_starts(n: int, size: int, stride: int) -> List[int]:
    """Window starts along one axis of length `n`: every `stride` px, the last window flush with the end (one
    window at 0 if n <= size). Shared by `refseg tasks` chips and the large-scene tiling."""
    if n <= size:
        return [0]
    starts = list(range(0, n - size, stride))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts
