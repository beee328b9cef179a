"""Writing GeoTIFFs: `write_geotiff` (any bands, tile by tile), `write_mask_geotiff`, `geotiff_tags`.

    from formats.raster import load_raster
    from formats.geotiff_writer import write_mask_geotiff

    raster = load_raster("scene.tif", bands="4,3,2")
    ...                                                   # mask: H x W bool from the predictor
    write_mask_geotiff(mask, "mask.tif", raster.georef)   # single band uint8, 255 = target, same georeference

GeoTIFFs are written with tifffile: tiled (512 x 512), deflate-compressed, with ModelPixelScale + ModelTiepoint
(or ModelTransformation for rotated grids), the source's GeoKeys copied verbatim (so user-defined CRSs survive)
or, for a bare "EPSG:<code>", a minimal GeoKeyDirectory, and GDAL_NODATA when given. The reading side is
formats.raster_reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np

from formats.georef import (
    KEY_GEOGRAPHIC_TYPE,
    KEY_MODEL_TYPE,
    KEY_PROJECTED_TYPE,
    KEY_RASTER_TYPE,
    TAG_GDAL_NODATA,
    TAG_GEO_ASCII,
    TAG_GEO_DOUBLES,
    TAG_GEOKEYS,
    TAG_PIXEL_SCALE,
    TAG_TIEPOINT,
    TAG_TRANSFORMATION,
    GeoReference,
)
from formats.tiff_codecs import tifffile_module

PathLike = Union[str, Path]
TILE = 512

# TIFF field types for tifffile extratags
_SHORT, _ASCII, _DOUBLE = 3, 2, 12


def _is_geographic_epsg(code: int) -> bool:
    """Geographic 2-D CRSs live in EPSG 4000-4999 (WGS 84 = 4326, NAD83 = 4269, ETRS89 = 4258, ...)."""
    return 4000 <= code < 5000


def geotiff_tags(georef: Optional[GeoReference], nodata: Optional[float] = None) -> List[tuple]:
    """tifffile `extratags` carrying a georeference (and GDAL_NODATA)."""
    tags: List[tuple] = []
    if georef is not None:
        a, b, c, d, e, f = (float(v) for v in georef.transform)
        if b == 0.0 and d == 0.0 and a > 0 and e < 0:
            tags.append((TAG_PIXEL_SCALE, _DOUBLE, 3, (a, -e, 0.0), True))
            tags.append((TAG_TIEPOINT, _DOUBLE, 6, (0.0, 0.0, 0.0, c, f, 0.0), True))
        else:
            tags.append((TAG_TRANSFORMATION, _DOUBLE, 16,
                         (a, b, 0.0, c, d, e, 0.0, f, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), True))
        if georef.geokeys is not None:
            directory, doubles, ascii_params = georef.geokeys
            directory = list(directory)
            # corner-based transform above: make sure the keys say PixelIsArea
            for k in range(directory[3]):
                base = 4 + 4 * k
                if directory[base] == KEY_RASTER_TYPE and directory[base + 1] == 0:
                    directory[base + 3] = 1
            tags.append((TAG_GEOKEYS, _SHORT, len(directory), tuple(directory), True))
            if doubles:
                tags.append((TAG_GEO_DOUBLES, _DOUBLE, len(doubles), tuple(doubles), True))
            if ascii_params:
                tags.append((TAG_GEO_ASCII, _ASCII, 0, ascii_params, True))
        elif georef.epsg is not None:
            code = georef.epsg
            keys = [(KEY_MODEL_TYPE, 2 if _is_geographic_epsg(code) else 1), (KEY_RASTER_TYPE, 1),
                    (KEY_GEOGRAPHIC_TYPE if _is_geographic_epsg(code) else KEY_PROJECTED_TYPE, code)]
            directory = [1, 1, 0, len(keys)]
            for key, value in sorted(keys):
                directory += [key, 0, 1, value]
            tags.append((TAG_GEOKEYS, _SHORT, len(directory), tuple(directory), True))
        elif georef.crs:
            text = georef.crs.replace("|", "/") + "|"
            directory = [1, 1, 0, 2, KEY_MODEL_TYPE, 0, 1, 32767, 1026, TAG_GEO_ASCII, len(text), 0]
            tags.append((TAG_GEOKEYS, _SHORT, len(directory), tuple(directory), True))
            tags.append((TAG_GEO_ASCII, _ASCII, 0, text, True))
    if nodata is not None:
        tags.append((TAG_GDAL_NODATA, _ASCII, 0, repr(float(nodata)) if not float(nodata).is_integer()
                     else str(int(nodata)), True))
    return tags


def write_geotiff(path: PathLike, data: Union[np.ndarray, Callable[[int, int, int, int], np.ndarray]],
                  georef: Optional[GeoReference] = None, nodata: Optional[float] = None,
                  shape: Optional[Tuple[int, ...]] = None, dtype: Any = None, tile: int = TILE,
                  compression: Optional[str] = "zlib", level: Optional[int] = None) -> Path:
    """Write a tiled GeoTIFF.

    Args:
        data: an H x W or H x W x B array, or a function (row0, col0, h, w) -> h x w (x B) array called tile by
            tile (then `shape` and `dtype` are required): the whole image is never held in memory.
        georef: transform + CRS (+ GeoKeys) to write; None for a plain TIFF.
        compression, level: "zlib" (deflate, readable everywhere), "lzma", "packbits" or None; zlib level 1-9.
    """
    tifffile = tifffile_module()
    if callable(data):
        if shape is None or dtype is None:
            raise ValueError("shape and dtype are required when data is a tile function")
        fn = data
    else:
        arr = np.asarray(data)
        shape, dtype = arr.shape, arr.dtype

        def fn(r0: int, c0: int, h: int, w: int) -> np.ndarray:
            return arr[r0: r0 + h, c0: c0 + w]

    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    height, width = shape[:2]
    bands = shape[2] if len(shape) == 3 else 1

    def tiles() -> Iterator[np.ndarray]:
        for r0 in range(0, height, tile):
            for c0 in range(0, width, tile):
                h, w = min(tile, height - r0), min(tile, width - c0)
                part = np.asarray(fn(r0, c0, h, w), dtype=dtype).reshape(h, w, bands)
                if (h, w) != (tile, tile):
                    full = np.zeros((tile, tile, bands), dtype)
                    full[:h, :w] = part
                    part = full
                yield part

    photometric = "rgb" if bands == 3 and dtype == np.uint8 else "minisblack"
    path = Path(path)
    tifffile.imwrite(path, tiles(), shape=(height, width, bands) if bands > 1 else (height, width), dtype=dtype,
                     tile=(tile, tile), photometric=photometric, planarconfig="contig",
                     compression=compression, compressionargs={"level": level} if compression and level else None,
                     extratags=geotiff_tags(georef, nodata), metadata=None)
    return path


def write_mask_geotiff(mask: np.ndarray, path: PathLike, georef: Optional[GeoReference] = None,
                       value: int = 255) -> Path:
    """A mask as a single-band uint8 GeoTIFF (target = `value`, default 255 as in the interchange masks)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    v = np.uint8(value)

    def fn(r0: int, c0: int, h: int, w: int) -> np.ndarray:
        return (mask[r0: r0 + h, c0: c0 + w] > 0).astype(np.uint8) * v

    return write_geotiff(path, fn, georef, shape=mask.shape, dtype=np.uint8)
