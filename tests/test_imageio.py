"""Tests of formats.images / .raster / .raster_reader / .stretch / .georef / .tiff_codecs: PNG/JPEG as before,
(Geo)TIFF bands / stretch / nodata / georeference, windows, overviews, LZW fallback, bad files; and the data set
export CLI on a data set holding a 16-bit GeoTIFF."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from formats.georef import GeoReference
from formats.geotiff_writer import write_geotiff
from formats.image_source import MAX_IMAGE_PIXELS, ImageLoadError
from formats.images import load_image, load_mask, save_mask
from formats.raster import load_raster
from formats.raster_reader import RasterReader
from formats.stretch import parse_bands, parse_stretch
from formats.tiff_codecs import lzw_decode

GEO = GeoReference((10.0, 0.0, 600000.0, 0.0, -10.0, 5000000.0), "EPSG:32632")


def _multispectral(h=40, w=60, bands=5, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # band b has values around 1000 * (b + 1): per-band stretch must equalise them
    return (rng.integers(0, 1000, (h, w, bands)) + 1000 * np.arange(1, bands + 1)).astype(np.uint16)


# ------------------------------------------------------------------------------------------------ existing API


def test_png_jpeg_and_arrays_unchanged(tmp_path: Path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)
    assert np.array_equal(load_image((tmp_path / "a.png").read_bytes()), rgb)
    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert np.array_equal(load_image(tmp_path / "g.png"), np.stack([grey] * 3, -1))
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert load_image(tmp_path / "a.jpg").shape == (20, 30, 3)
    m = rgb[..., 0] > 128
    save_mask(m, tmp_path / "m.png")
    assert np.array_equal(load_mask(tmp_path / "m.png"), m)
    with pytest.raises(ImageLoadError):
        load_image(b"not an image at all")


def test_rgb_tiff_loads_the_same_through_tifffile_and_pil(tmp_path: Path):
    rgb = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pil.tif")  # PIL-written, striped
    write_geotiff(tmp_path / "geo.tif", rgb, GEO, tile=16)  # tiled, deflate
    assert np.array_equal(load_image(tmp_path / "pil.tif"), rgb)
    assert np.array_equal(load_image(tmp_path / "geo.tif"), rgb)
    assert np.array_equal(load_image((tmp_path / "geo.tif").read_bytes()), rgb)
    # paletted TIFF still goes through PIL's palette conversion
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.tif")
    assert np.array_equal(load_image(tmp_path / "pal.tif"), np.asarray(Image.open(tmp_path / "pal.tif").convert("RGB")))
    # masks stored as TIFF (RefSegRS) read as before, also 16-bit multi-band ones PIL cannot read
    m = rgb[..., 1] > 100
    save_mask(m, tmp_path / "m.tif")
    assert np.array_equal(load_mask(tmp_path / "m.tif"), m)
    write_geotiff(tmp_path / "m16.tif", np.stack([m.astype(np.uint16) * 7, np.ones_like(m, np.uint16)], -1))
    assert np.array_equal(load_mask(tmp_path / "m16.tif"), m)


# ------------------------------------------------------------------------------------------------ GeoTIFF


def test_band_selection_stretch_and_georeference(tmp_path: Path):
    data = _multispectral()
    write_geotiff(tmp_path / "ms.tif", data, GEO, tile=16)
    r = load_raster(tmp_path / "ms.tif", bands="4,3,2", stretch="2,98")
    assert r.pixels.shape == (40, 60, 3) and r.pixels.dtype == np.uint8
    assert r.bands == (4, 3, 2) and r.dtype == "uint16"
    assert r.crs == "EPSG:32632" and r.transform == GEO.transform and r.nodata_mask is None
    for k, b in enumerate((4, 3, 2)):
        band = data[..., b - 1].astype(np.float64)
        lo, hi = np.percentile(band, [2, 98])
        expect = np.rint(np.clip((band - lo) / (hi - lo), 0, 1) * 255)
        assert np.abs(r.pixels[..., k].astype(int) - expect).max() <= 1  # float32 arithmetic
        assert r.pixels[..., k].min() == 0 and r.pixels[..., k].max() == 255  # each band spans 0..255
    grey = load_raster(tmp_path / "ms.tif", bands=[5])
    assert np.array_equal(grey.pixels[..., 0], grey.pixels[..., 2])
    # "none": 16-bit scaled from its full range; minmax: 0-100 %
    none = load_raster(tmp_path / "ms.tif", bands="1,2,3", stretch="none")
    assert np.array_equal(none.pixels[..., 0], np.rint(data[..., 0] / 65535 * 255).astype(np.uint8))
    mm = load_raster(tmp_path / "ms.tif", bands="1,2,3", stretch="minmax")
    assert mm.pixels[..., 0].min() == 0 and mm.pixels[..., 0].max() == 255
    # load_image on the same file: bands 1-3 with the default stretch
    assert np.array_equal(load_image(tmp_path / "ms.tif"), load_raster(tmp_path / "ms.tif").pixels)
    with pytest.raises(ImageLoadError, match="band 6 does not exist"):
        load_raster(tmp_path / "ms.tif", bands="6,3,2")


def test_nodata_excluded_from_statistics_and_zeroed(tmp_path: Path):
    data = _multispectral(bands=3).astype(np.float32)
    data[:10] = -9999.0  # a nodata border
    data[20, 5, :] = np.nan  # float NaN is nodata too
    write_geotiff(tmp_path / "nd.tif", data, GEO, nodata=-9999)
    r = load_raster(tmp_path / "nd.tif")
    assert r.nodata == -9999 and r.nodata_mask is not None
    expect = np.zeros((40, 60), bool)
    expect[:10] = True
    expect[20, 5] = True
    assert np.array_equal(r.nodata_mask, expect)
    assert (r.pixels[expect] == 0).all()
    valid = data[10:, :, 0][np.isfinite(data[10:, :, 0])]
    lo, hi = np.percentile(valid, [2, 98])  # statistics over valid pixels only
    assert r.stretch.lo[0] == pytest.approx(lo, rel=1e-4) and r.stretch.hi[0] == pytest.approx(hi, rel=1e-4)


def test_windows_overview_planar_and_striped(tmp_path: Path):
    import tifffile

    data = _multispectral(h=70, w=90, bands=4)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(data, 2, 0), tile=(32, 32), planarconfig="separate",
                     photometric="minisblack", compression="zlib")
    tifffile.imwrite(tmp_path / "strips.tif", data, rowsperstrip=8, photometric="minisblack",
                     planarconfig="contig", compression="zlib")
    for name in ("planar.tif", "strips.tif"):
        with RasterReader(tmp_path / name) as r:
            assert (r.height, r.width, r.count) == (70, 90, 4) and r.georef is None
            win = r.read_window((13, 29, 40, 50), bands=[4, 1])
            assert np.array_equal(win, data[13:53, 29:79][..., [3, 0]])
            ov, valid, f = r.read_overview(30, bands=[2])
            assert f == 3 and ov.shape == (24, 30, 1) and valid.all()
            # area means over 3x3 blocks (partial blocks at the bottom edge average what exists)
            assert ov[0, 0, 0] == pytest.approx(data[:3, :3, 1].mean(), rel=1e-5)
            assert ov[23, 29, 0] == pytest.approx(data[69:, 87:, 1].mean(), rel=1e-5)
        assert load_raster(tmp_path / name, bands="4,3,2").pixels.shape == (70, 90, 3)


def test_pixel_is_point_and_geokeys_round_trip(tmp_path: Path):
    import tifffile

    # a PixelIsPoint GeoTIFF with a user-defined CRS citation, as some tools write
    keys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2, 3072, 0, 1, 32631]
    extratags = [(33550, 12, 3, (2.0, 2.0, 0.0), True), (33922, 12, 6, (0, 0, 0, 100.0, 200.0, 0), True),
                 (34735, 3, len(keys), keys, True)]
    tifffile.imwrite(tmp_path / "pt.tif", np.zeros((4, 4), np.uint8), extratags=extratags)
    r = load_raster(tmp_path / "pt.tif")
    assert r.crs == "EPSG:32631"
    assert r.transform == (2.0, 0.0, 99.0, 0.0, -2.0, 201.0)  # moved from pixel centre to corner


def test_lzw_fallback_decoder(tmp_path: Path):
    rgb = np.random.default_rng(3).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    rgb[:20] = 7  # long runs exercise the growing code width
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    with RasterReader(tmp_path / "lzw.tif") as r:
        assert r.page.compression == 5
        assert np.array_equal(r.read_window(), rgb)
    assert np.array_equal(load_image(tmp_path / "lzw.tif"), rgb)
    with pytest.raises(ValueError):
        lzw_decode(bytes([0xFF, 0xFF, 0xFF]))


def test_bad_files_and_bombs(tmp_path: Path):
    import tifffile

    good = io.BytesIO()
    tifffile.imwrite(good, np.zeros((64, 64, 3), np.uint8), tile=(16, 16), compression="zlib")
    data = good.getvalue()
    with pytest.raises(ImageLoadError):
        load_image(data[:200])  # truncated
    (tmp_path / "trunc.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError):
        load_image(tmp_path / "trunc.tif")
    with pytest.raises(ImageLoadError):
        load_raster(b"II*\x00garbage")
    # a decompression bomb: tiny file whose header declares 30000 x 20000 pixels
    bomb = tmp_path / "bomb.tif"
    tifffile.imwrite(bomb, np.zeros((16, 16), np.uint8))
    raw = bytearray(bomb.read_bytes())
    with tifffile.TiffFile(bomb) as tf:
        tags = tf.pages[0].tags
        patches = [(tags[256].valueoffset, tags[256].dtype, 20000), (tags[257].valueoffset, tags[257].dtype, 30000)]
    for offset, dtype, value in patches:
        size = 2 if int(dtype) == 3 else 4
        raw[offset: offset + size] = value.to_bytes(size, "little")
    bomb.write_bytes(bytes(raw))
    for call in (load_image, load_raster, load_mask):
        with pytest.raises(ImageLoadError, match=f"exceeds the limit of {MAX_IMAGE_PIXELS}"):
            call(bomb)


def test_parsers():
    assert parse_bands("4,3,2") == [4, 3, 2] and parse_bands(None) is None and parse_bands([1]) == [1]
    for bad in ("4,3", "0,1,2", "a,b,c"):
        with pytest.raises(ValueError):
            parse_bands(bad)
    assert parse_stretch("2,98") == (2.0, 98.0) and parse_stretch("minmax") == (0.0, 100.0)
    assert parse_stretch("none") == "none" and parse_stretch(None) == "auto"
    with pytest.raises(ValueError):
        parse_stretch("98,2")


# ------------------------------------------------------------------------------------------------ export CLI


def test_export_cli_round_trip_with_geotiff_images(tmp_path: Path):
    """interchange (with a 16-bit 4-band GeoTIFF image) -> RRSIS-D -> interchange via `refseg export`."""
    from cli.main import main
    from formats.datasets.interchange import read_interchange, write_annotations
    from formats.datasets.layouts import load_samples
    from formats.datasets.sample_mask import load_sample_mask

    root = tmp_path / "ic"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    write_geotiff(root / "images" / "scene.tif", _multispectral(bands=4), GEO)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "images" / "b.png")
    m1 = np.zeros((40, 60), bool)
    m1[5:20, 10:30] = True
    m2 = np.eye(40, 60, dtype=bool)
    save_mask(m1, root / "masks" / "m1.png")
    save_mask(m2, root / "masks" / "m2.png")
    write_annotations(root, [
        {"image": "images/scene.tif", "mask": "masks/m1.png", "expression": "the field in the north", "split": "train"},
        {"image": "images/scene.tif", "mask": "masks/m2.png", "expression": "the diagonal road", "split": "val"},
        {"image": "images/b.png", "mask": "masks/m1.png", "expression": "a roof", "split": "test"},
    ])

    def canon(samples):
        return sorted((s.split, s.expression, load_sample_mask(s).tobytes(), load_image(s.image).tobytes())
                      for s in samples)

    assert main(["export", "--data", str(root), "--to", "rrsis-d", str(tmp_path / "rrsisd")]) == 0
    assert main(["export", "--data", f"rrsis-d:{tmp_path / 'rrsisd'}", "--to", "interchange",
                 str(tmp_path / "ic2")]) == 0
    original = read_interchange(root)
    assert canon(read_interchange(tmp_path / "ic2")) == canon(original)
    assert canon(load_samples(f"rrsis-d:{tmp_path / 'rrsisd'}", "val")) == canon(read_interchange(root, "val"))
    # the GeoTIFF was copied byte for byte (georeference kept)
    copied = [p for p in (tmp_path / "ic2" / "images").iterdir() if p.suffix == ".tif"]
    assert len(copied) == 1 and load_raster(copied[0]).crs == "EPSG:32632"
    assert main(["export", "--data", str(root), "--to", "refsegrs", str(tmp_path / "rs"), "--split", "train"]) == 0
    assert len(load_samples(f"refsegrs:{tmp_path / 'rs'}")) == 1
    coco = json.loads((tmp_path / "rrsisd" / "instances.json").read_text())
    assert {(im["width"], im["height"]) for im in coco["images"]} == {(60, 40)}


def test_image_dimensions_reads_headers_only_and_agrees_with_load_image(tmp_path):
    import tifffile

    from formats.image_source import ImageLoadError
    from formats.images import image_dimensions, load_image

    rgb = np.zeros((30, 40, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((4, 30, 40), np.uint16))  # 4-band 16-bit, planar
    for name in ("a.png", "b.tif"):
        path = tmp_path / name
        h, w = load_image(path).shape[:2]
        assert image_dimensions(path) == (w, h) == (40, 30)
        assert image_dimensions(path.read_bytes()) == (40, 30)
    with pytest.raises(ImageLoadError):
        image_dimensions(b"not an image at all")
