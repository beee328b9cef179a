"""Masks as polygons: in pixel coordinates (`mask_to_polygons`) and as GeoJSON in the scene's CRS.

    from formats.raster import load_raster
    from formats.mask_polygons import mask_to_geojson

    raster = load_raster("scene.tif", bands="4,3,2")
    ...                                                   # mask: H x W bool from the predictor
    fc = mask_to_geojson(mask, raster.georef)             # FeatureCollection, coordinates in the scene's CRS

Polygons follow pixel edges exactly (no simplification other than dropping collinear vertices), so the area of
the polygons is exactly the mask's pixel count times the pixel area. Foreground is 4-connected (as GDAL's
polygonize by default): pixels that touch only at a corner are separate polygons; holes (background enclosed
by a component, background 8-connected) become interior rings. Rings follow RFC 7946: exterior counter-
clockwise, holes clockwise, first point repeated at the end. Label Studio polygons (labelstudio.polygons) come
from the same tracer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from formats.georef import GeoReference

PathLike = Union[str, Path]

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
