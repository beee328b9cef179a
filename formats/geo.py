"""Georeferenced outputs: masks as GeoTIFFs and as GeoJSON polygons in the scene's CRS.

    from formats.raster import load_raster
    from formats.geo import write_mask_geotiff, mask_to_geojson

    raster = load_raster("scene.tif", bands="4,3,2")
    ...                                                   # mask: H x W bool from the predictor
    write_mask_geotiff(mask, "mask.tif", raster.georef)   # single band uint8, 255 = target, same georeference
    fc = mask_to_geojson(mask, raster.georef)             # FeatureCollection, coordinates in the scene's CRS

Polygons follow pixel edges exactly (no simplification other than dropping collinear vertices), so the area of
the polygons is exactly the mask's pixel count times the pixel area. Foreground is 4-connected (as GDAL's
polygonize by default): pixels that touch only at a corner are separate polygons; holes (background enclosed
by a component, background 8-connected) become interior rings. Rings follow RFC 7946: exterior counter-
clockwise, holes clockwise, first point repeated at the end.

GeoTIFFs are written with tifffile: tiled (512 x 512), deflate-compressed, with ModelPixelScale + ModelTiepoint
(or ModelTransformation for rotated grids), the source's GeoKeys copied verbatim (so user-defined CRSs survive)
or, for a bare "EPSG:<code>", a minimal GeoKeyDirectory, and GDAL_NODATA when given.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

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


# ------------------------------------------------------------------------------------------------ GeoTIFF tags


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


# ------------------------------------------------------------------------------------------------ polygons

_DX = np.array([1, 0, -1, 0])  # direction 0 = east, 1 = south, 2 = west, 3 = north (image axes, y down)
_DY = np.array([0, 1, 0, -1])


def _ring_area(xy: np.ndarray) -> float:
    """Shoelace signed area of a closed ring (first point repeated at the end)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _trace_rings(mask: np.ndarray) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Boundary rings of a bool mask along pixel edges: [(vertices K+1 x 2 (x, y) closed, first edge info)].

    Directed edges keep foreground on their right (image axes), so exterior rings have a positive shoelace area
    in pixel coordinates and holes a negative one. At a saddle vertex (two diagonal foreground pixels) the walk
    turns right, towards the pixel it came along: foreground is 4-connected.
    """
    h, w = mask.shape
    p = np.zeros((h + 2, w + 2), bool)
    p[1:-1, 1:-1] = mask
    stride = w + 1
    starts, dirs = [], []
    # horizontal grid lines y = 0..h; above = pixel row y-1, below = row y
    above, below = p[:-1, 1:-1], p[1:, 1:-1]
    ys, xs = np.nonzero(below & ~above)  # top edge of a foreground pixel: east from (x, y)
    starts.append(ys * stride + xs); dirs.append(np.zeros(ys.size, np.int8))  # noqa: E702
    ys, xs = np.nonzero(above & ~below)  # bottom edge: west from (x + 1, y)
    starts.append(ys * stride + xs + 1); dirs.append(np.full(ys.size, 2, np.int8))  # noqa: E702
    # vertical grid lines x = 0..w; left = pixel column x-1, right = column x
    left, right = p[1:-1, :-1], p[1:-1, 1:]
    ys, xs = np.nonzero(right & ~left)  # left edge: north from (x, y + 1)
    starts.append((ys + 1) * stride + xs); dirs.append(np.full(ys.size, 3, np.int8))  # noqa: E702
    ys, xs = np.nonzero(left & ~right)  # right edge: south from (x, y)
    starts.append(ys * stride + xs); dirs.append(np.ones(ys.size, np.int8))  # noqa: E702
    start = np.concatenate(starts).astype(np.int64)
    d = np.concatenate(dirs).astype(np.int64)
    if start.size == 0:
        return []
    end = start + _DX[d] + _DY[d] * stride
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    pos = np.searchsorted(sorted_start, end)
    n1 = order[pos]
    pos2 = np.minimum(pos + 1, start.size - 1)
    saddle = (pos + 1 < start.size) & (sorted_start[pos2] == end)
    n2 = order[pos2]
    want = (d + 1) % 4
    nxt = np.where(saddle & (d[n1] != want), n2, n1)
    nxt_list = nxt.tolist()
    d_list = d.tolist()
    seen = np.zeros(start.size, bool)
    rings = []
    for e0 in range(start.size):
        if seen[e0]:
            continue
        cycle = []
        e = e0
        while not seen[e]:
            seen[e] = True
            cycle.append(e)
            e = nxt_list[e]
        idx = np.asarray(cycle, np.int64)
        cd = d[idx]
        corner = cd != np.roll(cd, 1)  # keep vertices where the direction changes
        if not corner.any():  # pragma: no cover - a closed ring always turns
            corner[0] = True
        v = start[idx[corner]]
        xy = np.stack([v % stride, v // stride], axis=1).astype(np.float64)
        xy = np.vstack([xy, xy[:1]])
        rings.append((xy, np.array([start[e0] % stride, start[e0] // stride, d_list[e0]])))
    return rings


def _inside(px: float, py: float, ring: np.ndarray) -> bool:
    """Even-odd point-in-ring test (the point is never on a ring: it is a pixel centre)."""
    x0, y0 = ring[:-1, 0], ring[:-1, 1]
    x1, y1 = ring[1:, 0], ring[1:, 1]
    crosses = (y0 > py) != (y1 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(crosses & (px < xc)) % 2)


def mask_to_polygons(mask: np.ndarray) -> List[List[np.ndarray]]:
    """Polygons of a bool mask in pixel coordinates (x = column, y = row, pixel corners at integers).

    Returns [[exterior, hole, ...], ...]; each ring is a closed K x 2 float array. Orientation here is that of
    image axes (exterior clockwise on screen); `mask_to_geojson` orients for RFC 7946.
    """
    mask = np.asarray(mask) > 0
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return []
    r0, c0 = int(rows[0]), int(cols[0])
    crop = mask[r0: int(rows[-1]) + 1, c0: int(cols[-1]) + 1]
    exteriors: List[Tuple[np.ndarray, float, np.ndarray]] = []
    holes: List[Tuple[np.ndarray, Tuple[float, float]]] = []
    for xy, (x, y, d) in _trace_rings(crop):
        area = _ring_area(xy)
        xy = xy + np.array([c0, r0], np.float64)
        if area > 0:
            exteriors.append((xy, area, np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])))
        else:
            # the background pixel on the left of the ring's first edge is inside the hole
            mx, my = x + 0.5 * _DX[d], y + 0.5 * _DY[d]
            lx, ly = _DY[d], -_DX[d]  # left normal in image axes
            holes.append((xy, (c0 + mx + 0.5 * lx, r0 + my + 0.5 * ly)))
    polys: List[List[np.ndarray]] = [[xy] for xy, _, _ in exteriors]
    for xy, (px, py) in holes:
        best, best_area = -1, np.inf
        for k, (ext, area, bb) in enumerate(exteriors):
            if area < best_area and bb[0] < px < bb[2] and bb[1] < py < bb[3] and _inside(px, py, ext):
                best, best_area = k, area
        if best < 0:  # pragma: no cover - every hole has an enclosing exterior
            raise RuntimeError("hole without an enclosing ring")
        polys[best].append(xy)
    return polys


def _orient(ring: List[List[float]], ccw: bool) -> List[List[float]]:
    area = _ring_area(np.asarray(ring))
    return ring if (area > 0) == ccw else ring[::-1]


def polygon_pixel_area(poly: Sequence[np.ndarray]) -> float:
    """Area in pixels of a polygon from `mask_to_polygons` (exterior minus holes)."""
    return abs(_ring_area(poly[0])) - sum(abs(_ring_area(h)) for h in poly[1:])


def mask_to_geojson(mask: np.ndarray, georef: Optional[GeoReference] = None,
                    properties: Optional[Dict[str, Any]] = None, min_pixels: int = 0) -> Dict[str, Any]:
    """A GeoJSON FeatureCollection of the mask's polygons, one Feature per 4-connected component.

    Coordinates are in the scene's CRS when `georef` is given (else pixel coordinates, x = column, y = row);
    the legacy "crs" member names the CRS (GDAL/QGIS read it; RFC 7946 readers ignore it). Feature properties:
    `pixels` (pixel count), `area` (in CRS units squared, or pixels), and `properties` if given. Components
    smaller than `min_pixels` are dropped.
    """
    features = []
    for poly in mask_to_polygons(mask):
        pixels = int(round(polygon_pixel_area(poly)))
        if pixels < min_pixels:
            continue
        rings = []
        for k, ring in enumerate(poly):
            if georef is not None:
                x, y = georef.xy(ring[:, 0], ring[:, 1])
                pts = np.stack([x, y], axis=1)
            else:
                pts = ring
            coords = [[float(a), float(b)] for a, b in pts]
            rings.append(_orient(coords, ccw=(k == 0)))
        props = {"pixels": pixels, "area": pixels * (georef.pixel_area if georef is not None else 1.0)}
        if properties:
            props.update(properties)
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                         "properties": props})
    fc: Dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if georef is not None and georef.crs:
        name = f"urn:ogc:def:crs:EPSG::{georef.epsg}" if georef.epsg is not None else georef.crs
        fc["crs"] = {"type": "name", "properties": {"name": name}}
    return fc


def write_geojson(fc: Dict[str, Any], path: PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(fc))
    return path
