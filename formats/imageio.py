"""The one image loader of the project: images to RGB uint8, masks to bool.

Every reader (data sets, predictor, workers) goes through these functions so that mode conversion,
decompression-bomb limits and error messages are the same everywhere.

* `load_image(source)` -> H x W x 3 uint8 for PNG / JPEG / WebP / TIFF / GeoTIFF / COG (and arrays, PIL images).
* `load_raster(path, bands="4,3,2", stretch=(2, 98))` -> `Raster(pixels, georef, nodata_mask, ...)`: the same
  pixels plus the georeference (affine transform + CRS) and the nodata mask.
* `RasterReader(path)`: lazy access to a (Geo)TIFF without decoding all of it: `read_window`, `read_overview`
  (area-averaged, or a COG's internal overview level), `stretch_params`; what `refseg_model.large_scene` uses.

GeoTIFF support is pure Python (tifffile): 8/16/32-bit integer and 32/64-bit float bands, chunky or planar,
tiled or striped, uncompressed / deflate / LZW / PackBits / LZMA (other codecs such as JPEG-in-TIFF need the
optional `imagecodecs` package; 8-bit JPEG-in-TIFF still loads through PIL). Bands are chosen by 1-based index
("4,3,2"); bands that are not 8-bit are stretched per band between percentiles (default 2-98 %) computed over
valid pixels only; nodata pixels (GDAL_NODATA tag, or NaN for float data) become 0 and are reported in
`Raster.nodata_mask`.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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
        img = _open(source) if isinstance(source, Image.Image) or not is_tiff(source) else _open_tiff_with_pil(source)
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


# ================================================================================================================
# TIFF / GeoTIFF / COG

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
DEFAULT_STRETCH = (2.0, 98.0)
STATS_MAX_SIDE = 2048  # percentile statistics come from an overview of at most this side (exact for smaller)
Window = Tuple[int, int, int, int]  # (row0, col0, height, width) in full-resolution pixels

# GeoTIFF tags and keys (GeoTIFF 1.1 spec)
TAG_PIXEL_SCALE, TAG_TIEPOINT, TAG_TRANSFORMATION = 33550, 33922, 34264
TAG_GEOKEYS, TAG_GEO_DOUBLES, TAG_GEO_ASCII, TAG_GDAL_NODATA = 34735, 34736, 34737, 42113
KEY_MODEL_TYPE, KEY_RASTER_TYPE, KEY_CITATION = 1024, 1025, 1026
KEY_GEOGRAPHIC_TYPE, KEY_GEOG_CITATION, KEY_PROJECTED_TYPE, KEY_PCS_CITATION = 2048, 2049, 3072, 3073
USER_DEFINED = 32767


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


def _tifffile():
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise ImageLoadError("GeoTIFF support needs the 'tifffile' package (pip install tifffile)") from exc
    _register_lzw(tifffile)
    return tifffile


def lzw_decode(data: bytes, out: Any = None) -> bytes:
    """Decode TIFF LZW (MSB-first codes, 'early change' code-width switch), as in TIFF 6.0 section 13.

    A pure-Python fallback used only when the optional `imagecodecs` package is absent (tifffile then has no LZW
    codec); a few MB/s, enough for tiles and windows.
    """
    table: List[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    result = bytearray()
    bitbuf = nbits = 0
    width = 9
    prev: Optional[bytes] = None
    for byte in bytes(data):
        bitbuf = (bitbuf << 8) | byte
        nbits += 8
        while nbits >= width:
            nbits -= width
            code = (bitbuf >> nbits) & ((1 << width) - 1)
            bitbuf &= (1 << nbits) - 1
            if code == 256:  # clear
                del table[258:]
                width, prev = 9, None
                continue
            if code == 257:  # end of information
                return bytes(result)
            if prev is None:
                if code >= 256:
                    raise ValueError(f"invalid LZW code {code} after a clear code")
                entry = table[code]
            else:
                if code < len(table):
                    entry = table[code]
                    table.append(prev + entry[:1])
                elif code == len(table):
                    entry = prev + prev[:1]
                    table.append(entry)
                else:
                    raise ValueError(f"invalid LZW code {code} (table has {len(table)} entries)")
                if len(table) + 1 >= (1 << width) and width < 12:
                    width += 1
            result += entry
            prev = entry
    return bytes(result)


_LZW_REGISTERED = False


def _register_lzw(tifffile) -> None:
    """Give tifffile an LZW decoder when imagecodecs is missing (tifffile only ships zlib/lzma/packbits)."""
    global _LZW_REGISTERED
    if _LZW_REGISTERED:
        return
    _LZW_REGISTERED = True
    try:
        import imagecodecs  # noqa: F401  (tifffile uses it, with a fast LZW)

        return
    except ImportError:
        pass
    codecs = getattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", None)
    if isinstance(codecs, dict):
        codecs.setdefault(5, lzw_decode)


# ------------------------------------------------------------------------------------------------ georeference

Affine = Tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class GeoReference:
    """Where the pixels are: an affine transform and a CRS.

    transform: (a, b, c, d, e, f) in the order of rasterio/affine: for the pixel *corner* (col, row),
        x = a*col + b*row + c, y = d*col + e*row + f (GDAL geotransform (c, a, b, f, d, e)); north-up scenes have
        b = d = 0 and e < 0.
    crs: "EPSG:<code>" when the GeoKeys name one, else the citation text of a user-defined CRS, else None.
    geokeys: the raw GeoKeyDirectory / GeoDoubleParams / GeoAsciiParams tag values, copied verbatim into
        exported GeoTIFFs so that a user-defined CRS survives; None when unknown.
    """

    transform: Affine
    crs: Optional[str] = None
    geokeys: Optional[Tuple[Tuple[int, ...], Optional[Tuple[float, ...]], Optional[str]]] = None

    @property
    def epsg(self) -> Optional[int]:
        if self.crs and self.crs.upper().startswith("EPSG:"):
            try:
                return int(self.crs.split(":", 1)[1])
            except ValueError:
                return None
        return None

    def xy(self, col: Union[float, np.ndarray], row: Union[float, np.ndarray]):
        """CRS coordinates of pixel-grid points (corners at integers, centres at +0.5)."""
        a, b, c, d, e, f = self.transform
        return a * col + b * row + c, d * col + e * row + f

    @property
    def pixel_area(self) -> float:
        a, b, _, d, e, _ = self.transform
        return abs(a * e - b * d)

    def window(self, row0: int, col0: int) -> "GeoReference":
        """The georeference of a sub-window whose top-left pixel is (row0, col0)."""
        a, b, c, d, e, f = self.transform
        x, y = self.xy(col0, row0)
        return GeoReference((a, b, float(x), d, e, float(y)), self.crs, self.geokeys)

    def scaled(self, factor_rows: float, factor_cols: float) -> "GeoReference":
        """The georeference of the same extent sampled with pixels factor x larger."""
        a, b, c, d, e, f = self.transform
        return GeoReference((a * factor_cols, b * factor_rows, c, d * factor_cols, e * factor_rows, f),
                            self.crs, self.geokeys)


def parse_geokeys(directory: Sequence[int], doubles: Optional[Sequence[float]] = None,
                  ascii_params: Optional[str] = None) -> Dict[int, Any]:
    """GeoKeyDirectoryTag values -> {key id: value} (shorts inline, doubles and ASCII from the param tags)."""
    d = [int(v) for v in directory]
    if len(d) < 4:
        raise ImageLoadError("GeoKeyDirectoryTag is too short")
    out: Dict[int, Any] = {}
    n = d[3]
    for k in range(n):
        entry = d[4 + 4 * k: 8 + 4 * k]
        if len(entry) < 4:
            break
        key, loc, count, off = entry
        if loc == 0:
            out[key] = off
        elif loc == TAG_GEO_DOUBLES and doubles is not None:
            vals = [float(v) for v in doubles[off: off + count]]
            out[key] = vals[0] if count == 1 else vals
        elif loc == TAG_GEO_ASCII and ascii_params is not None:
            out[key] = ascii_params[off: off + count].rstrip("|\x00")
        elif loc == TAG_GEOKEYS:
            out[key] = d[off: off + count]
    return out


def _crs_from_keys(keys: Dict[int, Any]) -> Optional[str]:
    for key in (KEY_PROJECTED_TYPE, KEY_GEOGRAPHIC_TYPE):
        v = keys.get(key)
        if isinstance(v, int) and 0 < v < USER_DEFINED:
            return f"EPSG:{v}"
    for key in (KEY_PCS_CITATION, KEY_CITATION, KEY_GEOG_CITATION):
        v = keys.get(key)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _georeference(page) -> Optional[GeoReference]:
    tags = page.tags
    keys_tag = tags.get(TAG_GEOKEYS)
    keys: Dict[int, Any] = {}
    raw = None
    if keys_tag is not None:
        doubles = tags.get(TAG_GEO_DOUBLES)
        ascii_tag = tags.get(TAG_GEO_ASCII)
        dvals = tuple(float(v) for v in doubles.value) if doubles is not None else None
        avals = ascii_tag.value if ascii_tag is not None else None
        if isinstance(avals, bytes):
            avals = avals.decode("latin-1")
        if isinstance(avals, str) and not avals.endswith("|"):
            avals = avals + "|"  # tifffile strips the trailing NUL; GeoTIFF ASCII params end with '|'
        keys = parse_geokeys(keys_tag.value, dvals, avals)
        raw = (tuple(int(v) for v in keys_tag.value), dvals, avals)
    if TAG_TRANSFORMATION in tags:
        m = [float(v) for v in tags[TAG_TRANSFORMATION].value]
        transform: Affine = (m[0], m[1], m[3], m[4], m[5], m[7])
    elif TAG_PIXEL_SCALE in tags and TAG_TIEPOINT in tags:
        sx, sy = (float(v) for v in tags[TAG_PIXEL_SCALE].value[:2])
        tp = [float(v) for v in tags[TAG_TIEPOINT].value[:6]]
        i, j, x, y = tp[0], tp[1], tp[3], tp[4]
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    else:
        return None
    if keys.get(KEY_RASTER_TYPE) == 2:  # PixelIsPoint: the tie point is a pixel centre; move it to the corner
        a, b, c, d, e, f = transform
        transform = (a, b, c - 0.5 * (a + b), d, e, f - 0.5 * (d + e))
    return GeoReference(tuple(float(v) for v in transform), _crs_from_keys(keys), raw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ stretch


def parse_bands(bands: Union[None, str, Sequence[int]]) -> Optional[List[int]]:
    """"4,3,2" / [4, 3, 2] -> [4, 3, 2] (1-based band indices); None -> None (default choice)."""
    if bands is None:
        return None
    if isinstance(bands, str):
        try:
            out = [int(b) for b in bands.replace(" ", "").split(",") if b]
        except ValueError:
            raise ValueError(f"bands must be 1-based indices like '4,3,2', got {bands!r}") from None
    else:
        out = [int(b) for b in bands]
    if len(out) not in (1, 3) or any(b < 1 for b in out):
        raise ValueError(f"give 1 (grey) or 3 (R,G,B) 1-based band indices, got {bands!r}")
    return out


def parse_stretch(stretch: Union[None, str, Sequence[float]]) -> Union[str, Tuple[float, float]]:
    """"auto" | "none" | "minmax" | "2,98" | (2, 98) -> "auto" | "none" | (lo, hi) percentiles."""
    if stretch is None:
        return "auto"
    if isinstance(stretch, str):
        text = stretch.strip().lower()
        if text in ("auto", "none"):
            return text
        if text == "minmax":
            return (0.0, 100.0)
        try:
            parts = [float(v) for v in text.replace("-", ",").split(",") if v]
        except ValueError:
            parts = []
        stretch = parts
    vals = tuple(float(v) for v in stretch)
    if len(vals) != 2 or not (0.0 <= vals[0] < vals[1] <= 100.0):
        raise ValueError(f"stretch must be auto, none, minmax or two percentiles like 2,98, got {stretch!r}")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True)
class Stretch:
    """Per-band linear map to 8-bit: out = clip((v - lo) / (hi - lo), 0, 1) * 255; None = uint8 kept as is."""

    lo: Optional[Tuple[float, ...]]
    hi: Optional[Tuple[float, ...]]

    def apply(self, arr: np.ndarray, nodata: Optional[np.ndarray] = None) -> np.ndarray:
        """h x w x n raw values -> h x w x n uint8 (nodata pixels -> 0)."""
        if self.lo is None or self.hi is None:
            out = arr.copy() if arr.dtype == np.uint8 else np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        else:
            lo = np.asarray(self.lo, np.float32)
            scale = 255.0 / np.maximum(np.asarray(self.hi, np.float32) - lo, 1e-12)
            work = arr.astype(np.float32)
            work -= lo
            work *= scale
            np.nan_to_num(work, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            np.clip(work, 0, 255, out=work)
            out = np.rint(work).astype(np.uint8)
        if nodata is not None:
            out[nodata] = 0
        return out


def _dtype_range(dtype: np.dtype) -> Tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0  # float reflectance


def compute_stretch(sample: np.ndarray, valid: Optional[np.ndarray], stretch: Any) -> Stretch:
    """Stretch parameters from a sample of the raw bands (h x w x n) and its valid-pixel mask.

    "auto": uint8 bands are kept as they are, anything else gets the 2-98 % percentile stretch; "none": uint8
    kept, other integer types scaled from their full range, floats from [0, 1]; (lo, hi): percentiles per band
    over valid (not nodata, finite) pixels.
    """
    mode = parse_stretch(stretch) if not isinstance(stretch, tuple) else stretch
    if mode == "auto":
        mode = "none" if sample.dtype == np.uint8 else DEFAULT_STRETCH
    if mode == "none":
        if sample.dtype == np.uint8:
            return Stretch(None, None)
        lo, hi = _dtype_range(sample.dtype)
        n = sample.shape[-1]
        return Stretch((lo,) * n, (hi,) * n)
    p_lo, p_hi = mode
    los, his = [], []
    for b in range(sample.shape[-1]):
        band = sample[..., b]
        ok = np.isfinite(band) if np.issubdtype(band.dtype, np.floating) else np.ones(band.shape, bool)
        if valid is not None:
            ok &= valid
        vals = band[ok]
        if vals.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(vals, [p_lo, p_hi]))
            if hi <= lo:
                hi = lo + 1.0
        los.append(lo)
        his.append(hi)
    return Stretch(tuple(los), tuple(his))


# ------------------------------------------------------------------------------------------------ reader


@dataclass
class Raster:
    """A loaded raster: 8-bit RGB pixels plus where they are.

    pixels: H x W x 3 uint8 (after band selection and stretch; nodata pixels are 0).
    georef: GeoReference, or None for a plain (non-geo) image.
    nodata_mask: H x W bool, True where the source had no data (None when the source declares none).
    bands: the 1-based band indices used; dtype: the source sample type; nodata: the declared nodata value.
    """

    pixels: np.ndarray
    georef: Optional[GeoReference] = None
    nodata_mask: Optional[np.ndarray] = None
    bands: Tuple[int, ...] = (1, 2, 3)
    dtype: str = "uint8"
    nodata: Optional[float] = None
    stretch: Optional[Stretch] = None

    @property
    def transform(self) -> Optional[Affine]:
        return self.georef.transform if self.georef else None

    @property
    def crs(self) -> Optional[str]:
        return self.georef.crs if self.georef else None


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
        tifffile = _tifffile()
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
        self.georef = _georeference(page)
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


def load_raster(source: Union[str, Path, bytes], bands: Union[None, str, Sequence[int]] = None,
                stretch: Any = "auto") -> Raster:
    """Load a whole image with its georeference: `Raster(pixels HxWx3 uint8, georef, nodata_mask, ...)`.

    Args:
        source: a (Geo)TIFF / COG path or bytes; any other image (PNG, JPEG, ...) loads with georef=None.
        bands: 1-based band indices, "4,3,2" or [4, 3, 2] (3 bands -> RGB, 1 band -> grey); default 1,2,3 (or 1
            for images with fewer than 3 bands).
        stretch: "auto" (8-bit kept, otherwise per-band 2-98 % percentile stretch), "none", "minmax", or
            (lo, hi) percentiles. Statistics exclude nodata pixels.
    """
    band_list = parse_bands(bands)
    if not is_tiff(source):
        if band_list is not None and band_list not in ([1, 2, 3], [1]):
            raise ImageLoadError("band selection needs a (Geo)TIFF source")
        return Raster(load_image(source))
    with RasterReader(source) as reader:
        band_list = reader.check_bands(band_list)
        st = reader.stretch_params(band_list, stretch)
        pixels, nodata = reader.read_rgb(None, band_list, st)
        return Raster(np.ascontiguousarray(pixels), reader.georef, nodata, tuple(band_list), str(reader.dtype),
                      reader.nodata, st)


_PIL_TIFF_PHOTOMETRICS = (0, 3, 4, 5, 6, 8)  # min-is-white, palette, mask, separated/CMYK, YCbCr, CIELab


def _open_tiff_with_pil(source: Any) -> Optional[Image.Image]:
    """PIL's view of a TIFF (decoded), or None when PIL cannot decode it (size limits still raise)."""
    try:
        img = _open(source)
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
    img = _open(source)
    try:
        return load_image(img)
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(f"cannot decode image: {exc}") from exc


class _UsePIL(Exception):
    pass
