"""Tests of formats.mask_polygons and formats.geotiff_writer: mask -> polygons (exact areas, holes, saddles), GeoJSON
in the scene CRS, GeoTIFF masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from formats.georef import GeoReference
from formats.geotiff_writer import write_mask_geotiff
from formats.images import load_mask
from formats.mask_polygons import (
    _inside,
    _ring_area,
    mask_to_geojson,
    mask_to_polygons,
    polygon_pixel_area,
    write_geojson,
)
from formats.raster import load_raster
from formats.raster_reader import RasterReader

UTM = GeoReference((0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), "EPSG:32633")


def _covers(polys, x: float, y: float) -> bool:
    """Even-odd over all rings of all polygons (the rings never cross)."""
    return sum(_inside(x, y, ring) for poly in polys for ring in poly) % 2 == 1


def test_polygons_reproduce_random_masks_exactly():
    rng = np.random.default_rng(0)
    for _ in range(80):
        h, w = rng.integers(1, 14, 2)
        mask = rng.random((h, w)) < rng.random()
        polys = mask_to_polygons(mask)
        assert sum(polygon_pixel_area(p) for p in polys) == mask.sum()
        for y in range(h):
            for x in range(w):
                assert _covers(polys, x + 0.5, y + 0.5) == mask[y, x]
        for poly in polys:
            assert _ring_area(poly[0]) > 0 and all(_ring_area(r) < 0 for r in poly[1:])
            assert all(np.array_equal(r[0], r[-1]) for r in poly)


def test_holes_islands_and_saddles():
    m = np.zeros((12, 12), bool)
    m[1:11, 1:11] = True
    m[3:9, 3:9] = False  # a hole
    m[5:7, 5:7] = True  # an island in the hole
    polys = sorted(mask_to_polygons(m), key=lambda p: -abs(_ring_area(p[0])))
    assert len(polys) == 2 and len(polys[0]) == 2 and len(polys[1]) == 1
    assert polygon_pixel_area(polys[0]) == 100 - 36 and polygon_pixel_area(polys[1]) == 4
    assert len(polys[0][0]) == 5 and len(polys[0][1]) == 5  # collinear vertices dropped: squares have 4 corners
    # diagonal neighbours are separate polygons (4-connectivity), as in GDAL's polygonize
    d = np.array([[1, 0], [0, 1]], bool)
    assert len(mask_to_polygons(d)) == 2
    d2 = np.array([[0, 1], [1, 0]], bool)
    assert len(mask_to_polygons(d2)) == 2
    # a ring of pixels touching its hole diagonally: background is 8-connected, so no hole there
    r = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 0]], bool)
    polys = mask_to_polygons(r)
    assert sum(polygon_pixel_area(p) for p in polys) == r.sum()
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_geojson_in_scene_crs(tmp_path: Path):
    m = np.zeros((40, 50), bool)
    m[10:30, 5:25] = True
    m[15:20, 10:15] = False
    m[2:4, 40:48] = True
    fc = mask_to_geojson(m, UTM, properties={"expression": "the pond"})
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    total = 0.0
    for feat in fc["features"]:
        rings = feat["geometry"]["coordinates"]
        assert feat["geometry"]["type"] == "Polygon" and feat["properties"]["expression"] == "the pond"
        assert _ring_area(np.asarray(rings[0])) > 0  # RFC 7946: exterior counter-clockwise
        assert all(_ring_area(np.asarray(r)) < 0 for r in rings[1:])  # holes clockwise
        area = _ring_area(np.asarray(rings[0])) + sum(_ring_area(np.asarray(r)) for r in rings[1:])
        assert area == pytest.approx(feat["properties"]["area"])
        total += area
    assert total == pytest.approx(m.sum() * 0.25)  # pixel count x pixel area (0.5 m x 0.5 m)
    big = max(fc["features"], key=lambda f: f["properties"]["pixels"])
    xs = [p[0] for p in big["geometry"]["coordinates"][0]]
    ys = [p[1] for p in big["geometry"]["coordinates"][0]]
    assert (min(xs), max(xs)) == (500002.5, 500012.5) and (min(ys), max(ys)) == (4999985.0, 4999995.0)
    write_geojson(fc, tmp_path / "m.geojson")
    assert json.loads((tmp_path / "m.geojson").read_text()) == fc
    # without a georeference: pixel coordinates; small components can be dropped
    plain = mask_to_geojson(m, None, min_pixels=20)
    assert len(plain["features"]) == 1 and "crs" not in plain


def test_mask_geotiff_keeps_the_georeference(tmp_path: Path):
    m = np.zeros((700, 600), bool)
    m[100:400, 50:580] = True
    write_mask_geotiff(m, tmp_path / "m.tif", UTM)
    r = load_raster(tmp_path / "m.tif")
    assert r.crs == "EPSG:32633" and r.transform == UTM.transform
    with RasterReader(tmp_path / "m.tif") as rr:
        assert rr.count == 1 and rr.dtype == np.uint8 and rr.tiled
        assert set(np.unique(rr.read_window()).tolist()) == {0, 255}
    assert np.array_equal(load_mask(tmp_path / "m.tif"), m)
    # geographic EPSG codes and rotated grids
    geo = GeoReference((1e-4, 0.0, 13.4, 0.0, -1e-4, 52.5), "EPSG:4326")
    write_mask_geotiff(m[:10, :10], tmp_path / "g.tif", geo)
    assert load_raster(tmp_path / "g.tif").georef.transform == geo.transform
    assert load_raster(tmp_path / "g.tif").crs == "EPSG:4326"
    rot = GeoReference((1.0, 0.5, 10.0, 0.5, -1.0, 20.0), "EPSG:3857")
    write_mask_geotiff(m[:10, :10], tmp_path / "r.tif", rot)
    assert load_raster(tmp_path / "r.tif").transform == rot.transform


def test_source_geokeys_are_copied_verbatim(tmp_path: Path):
    import tifffile

    # a user-defined projected CRS known only by its citation, with double params
    keys = [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32767, 3073, 34737, 14, 0]
    extratags = [(33550, 12, 3, (2.0, 2.0, 0.0), True), (33922, 12, 6, (0, 0, 0, 100.0, 200.0, 0), True),
                 (34735, 3, len(keys), keys, True), (34737, 2, 0, "my local grid|", True)]
    tifffile.imwrite(tmp_path / "src.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb", extratags=extratags)
    src = load_raster(tmp_path / "src.tif")
    assert src.crs == "my local grid"
    write_mask_geotiff(np.ones((8, 8), bool), tmp_path / "out.tif", src.georef)
    out = load_raster(tmp_path / "out.tif")
    assert out.crs == "my local grid" and out.transform == (2.0, 0.0, 100.0, 0.0, -2.0, 200.0)
