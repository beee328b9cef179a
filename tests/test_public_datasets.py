"""Tests of formats.datasets (refsegrs, rrsisd, interchange, layouts, coco_masks, refs_pickle): RefSegRS / RISBench /
RRSIS-D readers and writers, COCO RLE, safe pickle."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from formats.datasets.coco_masks import (
    polygons_to_mask,
    rle_counts_to_string,
    rle_decode,
    rle_encode,
    rle_string_to_counts,
    segmentation_to_mask,
)
from formats.datasets.interchange import read_interchange, write_annotations, write_interchange
from formats.datasets.layouts import load_samples, write_samples
from formats.datasets.refs_pickle import load_refs_pickle
from formats.datasets.refsegrs import read_refsegrs, write_refsegrs
from formats.datasets.rrsisd import read_rrsisd, write_rrsisd
from formats.datasets.sample import DatasetFormatError, Sample
from formats.datasets.sample_mask import load_sample_mask
from formats.images import load_image

H = W = 16


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


@pytest.fixture
def interchange_root(tmp_path: Path) -> Path:
    """An interchange data set: 3 images, 5 masks (one empty), 7 expressions over the 3 splits."""
    root = tmp_path / "ic"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(root / "images" / f"im{i}.png")
    masks = {"a": _rect(2, 6, 3, 12), "b": _rect(8, 16, 0, 5), "c": _rect(0, 16, 10, 16),
             "d": np.eye(H, dtype=bool), "e": np.zeros((H, W), bool)}
    for name, m in masks.items():
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
    recs = [
        ("im0", "a", "the red roof on the upper side", "train"),
        ("im0", "a", "building near the top", "train"),  # second expression for the same object
        ("im0", "b", "a  small car, bottom-left (ünïcode)", "train"),  # double space kept
        ("im1", "c", "road along the right edge", "val"),
        ("im1", "d", "diagonal line", "test"),
        ("im2", "e", "nothing here", "test"),  # empty target
        ("im2", "c", "the right strip", "train"),
    ]
    write_annotations(root, [{"image": f"images/{i}.png", "mask": f"masks/{m}.png", "expression": e, "split": s}
                             for i, m, e, s in recs])
    return root


def _canon(samples):
    """Order-independent comparable view: (split, expression, mask bytes, image bytes)."""
    cache: dict = {}
    return sorted((s.split, s.expression, load_sample_mask(s, cache).tobytes(), load_image(s.image).tobytes())
                  for s in samples)


# ------------------------------------------------------------------------------------------------ RefSegRS


def _write_refsegrs_by_hand(root: Path, img_dir: str = "images", mask_dir: str = "masks") -> None:
    (root / img_dir).mkdir(parents=True)
    (root / mask_dir).mkdir()
    Image.fromarray(_rgb(0)).save(root / img_dir / "0.tif")
    Image.fromarray(_rgb(1)).save(root / img_dir / "1.png")  # other extension, found by id
    Image.fromarray(_rgb(2)).save(root / img_dir / "17.jpg")
    Image.fromarray(_rect(0, 4, 0, 4).astype(np.uint8)).save(root / mask_dir / "0.tif")  # 0/1 mask
    Image.fromarray(_rect(4, 8, 4, 8).astype(np.uint8) * 255).save(root / mask_dir / "1.tif")  # 0/255 mask
    Image.fromarray(_rect(8, 9, 0, 16).astype(np.uint8)).save(root / mask_dir / "17.png")
    (root / "output_phrase_train.txt").write_text("0 road on the left\n\n1  a   vehicle  \n", encoding="utf-8")
    (root / "output_phrase_val.txt").write_text("17 the long horizontal marking\n", encoding="utf-8")


@pytest.mark.parametrize("dirs", [("images", "masks"), ("img_rgb", "mask")])
def test_read_refsegrs_and_risbench_layouts(tmp_path: Path, dirs):
    _write_refsegrs_by_hand(tmp_path, *dirs)
    samples = read_refsegrs(tmp_path)
    assert [(s.image.name, s.mask.name, s.expression, s.split) for s in samples] == [
        ("0.tif", "0.tif", "road on the left", "train"),
        ("1.png", "1.tif", "a   vehicle", "train"),
        ("17.jpg", "17.png", "the long horizontal marking", "val"),
    ]
    assert np.array_equal(load_sample_mask(samples[0]), _rect(0, 4, 0, 4))  # 0/1 mask: 1 is target
    assert np.array_equal(load_sample_mask(samples[1]), _rect(4, 8, 4, 8))
    assert [s.expression for s in read_refsegrs(tmp_path, "val")] == ["the long horizontal marking"]
    with pytest.raises(DatasetFormatError, match="output_phrase_test"):
        read_refsegrs(tmp_path, "test")
    prefix = "refsegrs" if dirs[0] == "images" else "risbench"
    assert load_samples(f"{prefix}:{tmp_path}") == samples


def test_refsegrs_errors(tmp_path: Path):
    _write_refsegrs_by_hand(tmp_path)
    (tmp_path / "output_phrase_test.txt").write_text("0 fine\n1\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"output_phrase_test.txt:2"):
        read_refsegrs(tmp_path, "test")
    (tmp_path / "output_phrase_test.txt").write_text("99 no such image\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="no image file for id '99'"):
        read_refsegrs(tmp_path, "test")
    with pytest.raises(DatasetFormatError, match="no output_phrase"):
        read_refsegrs(tmp_path / "images")


@pytest.mark.parametrize("layout", ["refsegrs", "risbench"])
def test_round_trip_through_refsegrs(interchange_root: Path, tmp_path: Path, layout: str):
    original = read_interchange(interchange_root)
    out = write_refsegrs(original, tmp_path / layout, layout=layout)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["output_phrase_train.txt", "output_phrase_val.txt", "output_phrase_test.txt",
         *(("images", "masks") if layout == "refsegrs" else ("img_rgb", "mask"))])
    back = read_refsegrs(out)
    assert _canon(back) == _canon(original)
    write_interchange(back, tmp_path / "ic2")
    assert _canon(read_interchange(tmp_path / "ic2")) == _canon(original)


def test_refsegrs_writer_rejects_line_breaks(tmp_path: Path, interchange_root: Path):
    s = read_interchange(interchange_root)[0]
    bad = Sample(s.image, s.mask, "two\nlines", "train")
    with pytest.raises(ValueError, match="line break"):
        write_refsegrs([bad], tmp_path / "out")


# ------------------------------------------------------------------------------------------------ COCO RLE


def test_compressed_rle_hand_computed():
    # Mask h=5, w=10: column 0 empty, columns 1..8 full, column 9 target only in rows 3-4.
    # Column-major run lengths (background first): 5 bg (col 0), 40 fg (cols 1-8), 3 bg, 2 fg -> [5, 40, 3, 2].
    # COCO string: counts 0..2 are stored as is, later ones as the difference to the count two before:
    #   5  -> one 5-bit group 5, no continuation:                      chr(48 + 5)          = '5'
    #   40 -> groups 8 (|0x20 continuation = 40), then 1:              chr(88) chr(49)      = 'X1'
    #   3  ->                                                          chr(51)              = '3'
    #   2 - 40 = -38 -> low 5 bits 26 (|0x20 = 58), then -38>>5 = -2 -> low bits 30, which has the sign bit 0x10
    #        and the remaining value is -1, so it stops:               chr(106) chr(78)     = 'jN'
    # pycocotools.mask.decode({"counts": b"5X13jN", "size": [5, 10]}) gives the same mask.
    expected = np.zeros((5, 10), bool)
    expected[:, 1:9] = True
    expected[3:, 9] = True
    assert rle_string_to_counts("5X13jN") == [5, 40, 3, 2]
    assert rle_counts_to_string([5, 40, 3, 2]) == "5X13jN"
    assert np.array_equal(rle_decode({"counts": "5X13jN", "size": [5, 10]}), expected)
    assert np.array_equal(rle_decode({"counts": b"5X13jN", "size": [5, 10]}), expected)
    assert rle_encode(expected) == {"size": [5, 10], "counts": "5X13jN"}
    assert rle_encode(expected, compressed=False) == {"size": [5, 10], "counts": [5, 40, 3, 2]}

    # A string produced by pycocotools.mask.encode for a 6x7 mask with rows 1-3 x cols 2-5 and pixel (5, 0):
    # runs [5, 1, 7, 3, 3, 3, 3, 3, 3, 3, 8]; the 5th count is stored as 3 - 7 = -4 -> 28 + 48 = 'L'.
    m = np.zeros((6, 7), bool)
    m[1:4, 2:6] = True
    m[5, 0] = True
    assert rle_string_to_counts("5172L000005") == [5, 1, 7, 3, 3, 3, 3, 3, 3, 3, 8]
    assert np.array_equal(rle_decode({"counts": "5172L000005", "size": [6, 7]}), m)
    assert rle_encode(m)["counts"] == "5172L000005"


def test_rle_against_pycocotools_if_available():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < rng.random()
        ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle_encode(m)["counts"] == ref["counts"].decode()
        assert np.array_equal(rle_decode(ref), m)


def test_rle_errors_and_uncompressed():
    assert np.array_equal(rle_decode({"counts": [0, 4], "size": [2, 2]}), np.ones((2, 2), bool))
    with pytest.raises(DatasetFormatError, match="sum"):
        rle_decode({"counts": [1, 2], "size": [2, 2]})
    with pytest.raises(DatasetFormatError):
        rle_decode({"counts": "5X", "size": [5, 10]})  # truncated (continuation bit set on the last char)
    with pytest.raises(DatasetFormatError):
        rle_decode({"counts": [4]})


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_rle_round_trip_property(h, w, seed, p):
    m = np.random.default_rng(seed).random((h, w)) < p
    for compressed in (True, False):
        enc = rle_encode(m, compressed)
        assert np.array_equal(rle_decode(json.loads(json.dumps(enc))), m)


def test_polygons_and_segmentation_forms():
    # PIL fills the polygon including its outline: x 2..9, y 2..5 inclusive
    expected = np.zeros((8, 12), bool)
    expected[2:6, 2:10] = True
    assert np.array_equal(polygons_to_mask([[2, 2, 9, 2, 9, 5, 2, 5]], 8, 12), expected)
    assert np.array_equal(segmentation_to_mask([[2, 2, 9, 2, 9, 5, 2, 5]], 8, 12), expected)
    rle = rle_encode(expected)
    assert np.array_equal(segmentation_to_mask(rle, 8, 12), expected)
    other = np.zeros((8, 12), bool)
    other[7, :] = True
    assert np.array_equal(segmentation_to_mask([rle, rle_encode(other, False)], 8, 12), expected | other)
    with pytest.raises(DatasetFormatError):
        polygons_to_mask([[1, 2, 3, 4]], 8, 12)


# ------------------------------------------------------------------------------------------------ refs pickle


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_refs_unpickler_refuses_globals(tmp_path: Path, protocol: int):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1, "evil": _Evil(marker)}], protocol=protocol)
    assert b"system" in payload  # the pickle really references os.system (posix.system)
    with pytest.raises(DatasetFormatError, match="refusing to load global"):
        load_refs_pickle(payload)
    assert not marker.exists()
    # through the reader as well
    root = tmp_path / "rrsisd"
    (root / "images").mkdir(parents=True)
    (root / "refs(unc).p").write_bytes(payload)
    (root / "instances.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetFormatError, match="unsafe"):
        read_rrsisd(root)
    assert not marker.exists()


def test_refs_unpickler_refuses_harmless_classes_too():
    with pytest.raises(DatasetFormatError):
        load_refs_pickle(pickle.dumps([{"s": {1, 2}}], protocol=2))  # set needs find_class in protocol 2
    with pytest.raises(DatasetFormatError, match="list of ref dicts"):
        load_refs_pickle(pickle.dumps({"not": "a list"}, protocol=2))
    with pytest.raises(DatasetFormatError, match="cannot read"):
        load_refs_pickle(b"\x80\x02]q\x00")  # truncated


# ------------------------------------------------------------------------------------------------ RRSIS-D


def _write_rrsisd_by_hand(root: Path, image_parts=("images", "rrsisd", "JPEGImages")) -> None:
    """refs + instances with three segmentation forms: polygon, uncompressed RLE dict, [compressed RLE]."""
    img_dir = root.joinpath(*image_parts)
    img_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(0)).save(img_dir / "00001.jpg", quality=95)
    Image.fromarray(_rgb(1)).save(img_dir / "00002.jpg", quality=95)
    coco = {
        "images": [{"id": 1, "file_name": "00001.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "00002.jpg", "width": W, "height": H}],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": [[2, 2, 9, 2, 9, 5, 2, 5]], "bbox": [2, 2, 8, 4], "area": 32,
             "category_id": 1, "iscrowd": 0},
            {"id": 11, "image_id": 1, "segmentation": rle_encode(_rect(8, 16, 0, 5), compressed=False),
             "bbox": [0, 8, 5, 8], "area": 40, "category_id": 1, "iscrowd": 1},
            {"id": 20, "image_id": 2, "segmentation": [rle_encode(_rect(0, 16, 10, 16))], "bbox": [10, 0, 6, 16],
             "area": 96, "category_id": 2, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "road"}],
    }
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1, "file_name": "00001.jpg",
         "sentences": [{"sent": "the red car", "raw": "The red car.", "tokens": ["the", "red", "car"], "sent_id": 0},
                       {"sent": "vehicle at top", "raw": "", "tokens": ["vehicle", "at", "top"], "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 1, "file_name": "00001.jpg",
         "sentences": [{"sent": "lower left car", "raw": "lower left car", "tokens": [], "sent_id": 2}]},
        {"ref_id": 2, "ann_id": 20, "image_id": 2, "split": "test", "category_id": 2, "file_name": "00002.jpg",
         "sentences": [{"sent": "road on the right", "raw": "road on the right", "tokens": [], "sent_id": 3}]},
    ]
    (root / "refs(unc).p").parent.mkdir(parents=True, exist_ok=True)
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "instances.json").write_text(json.dumps(coco))


def test_read_rrsisd_fixture(tmp_path: Path):
    _write_rrsisd_by_hand(tmp_path)
    samples = read_rrsisd(tmp_path)
    assert [(s.image.name, s.expression, s.split) for s in samples] == [
        ("00001.jpg", "The red car.", "train"),  # raw preferred
        ("00001.jpg", "vehicle at top", "train"),  # empty raw -> sent
        ("00001.jpg", "lower left car", "val"),
        ("00002.jpg", "road on the right", "test"),
    ]
    assert str(samples[0].mask) == f"{tmp_path / 'instances.json'}#ann=10"
    poly = np.zeros((H, W), bool)
    poly[2:6, 2:10] = True
    cache: dict = {}
    assert np.array_equal(load_sample_mask(samples[0], cache), poly)
    assert np.array_equal(load_sample_mask(samples[2], cache), _rect(8, 16, 0, 5))
    assert np.array_equal(load_sample_mask(samples[3], cache), _rect(0, 16, 10, 16))
    assert len(cache) == 1  # instances.json parsed once
    assert np.array_equal(load_sample_mask(samples[3]), _rect(0, 16, 10, 16))  # module-level cache path
    assert [s.expression for s in read_rrsisd(tmp_path, "val")] == ["lower left car"]
    assert load_samples(f"rrsis-d:{tmp_path}", "test") == load_samples(f"rrsisd:{tmp_path}", "test")


@pytest.mark.parametrize("layout", ["jpegimages", "images", "rmsin"])
def test_read_rrsisd_alternative_trees(tmp_path: Path, layout: str):
    if layout == "jpegimages":
        _write_rrsisd_by_hand(tmp_path, ("JPEGImages",))
        root = tmp_path
    elif layout == "images":
        _write_rrsisd_by_hand(tmp_path, ("images",))
        root = tmp_path
    else:  # RMSIN: refer/data/rrsisd/{refs(unc).p,instances.json} + refer/data/images/rrsisd/JPEGImages
        _write_rrsisd_by_hand(tmp_path / "rrsisd", ())
        img_dir = tmp_path / "images" / "rrsisd" / "JPEGImages"
        img_dir.mkdir(parents=True)
        for f in (tmp_path / "rrsisd").glob("*.jpg"):
            f.rename(img_dir / f.name)
        root = tmp_path
    samples = read_rrsisd(root)
    assert len(samples) == 4 and all(s.image.is_file() for s in samples)


def test_rrsisd_errors(tmp_path: Path):
    with pytest.raises(DatasetFormatError, match="refs"):
        read_rrsisd(tmp_path)
    _write_rrsisd_by_hand(tmp_path)
    refs = load_refs_pickle(tmp_path / "refs(unc).p")
    refs[0]["split"] = "testA"
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DatasetFormatError, match="testA"):
        read_rrsisd(tmp_path)
    refs[0]["split"], refs[0]["ann_id"] = "train", 999
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    with pytest.raises(DatasetFormatError, match="ann_id 999"):
        read_rrsisd(tmp_path)
    refs[0]["ann_id"] = 10
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (tmp_path / "images" / "rrsisd" / "JPEGImages" / "00002.jpg").unlink()
    with pytest.raises(DatasetFormatError, match="00002.jpg"):
        read_rrsisd(tmp_path)


@pytest.mark.parametrize("compressed", [True, False])
def test_round_trip_interchange_rrsisd_interchange(interchange_root: Path, tmp_path: Path, compressed: bool):
    original = read_interchange(interchange_root)
    out = write_rrsisd(original, tmp_path / "rrsisd", compressed=compressed)
    # the refs pickle holds builtins only (the restricted unpickler reads it) with RefCOCO keys
    refs = load_refs_pickle(out / "refs(unc).p")
    assert len(refs) == 6  # (image, mask, split) groups; the two "a" expressions share a ref
    assert {"ref_id", "ann_id", "image_id", "split", "sentences", "sent_ids", "category_id", "file_name"} <= set(refs[0])
    assert set(refs[0]["sentences"][0]) == {"sent", "raw", "tokens", "sent_id"}
    coco = json.loads((out / "instances.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) == 6  # "c" is used on im1 and im2
    back = read_rrsisd(out)
    assert all("#ann=" in str(s.mask) for s in back)
    assert _canon(back) == _canon(original)
    write_interchange(back, tmp_path / "ic2")
    again = read_interchange(tmp_path / "ic2")
    assert _canon(again) == _canon(original)
    # and once more through RefSegRS, via the dispatcher
    write_samples(again, f"refsegrs:{tmp_path / 'rs'}")
    assert _canon(load_samples(f"refsegrs:{tmp_path / 'rs'}")) == _canon(original)


def test_written_rrsisd_annotations_are_consistent(interchange_root: Path, tmp_path: Path):
    out = write_rrsisd(read_interchange(interchange_root), tmp_path / "r")
    coco = json.loads((out / "instances.json").read_text())
    for ann in coco["annotations"]:
        m = segmentation_to_mask(ann["segmentation"], H, W)
        assert ann["area"] == int(m.sum())
        if m.any():
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        else:
            assert ann["bbox"] == [0, 0, 0, 0]
    assert all(im["width"] == W and im["height"] == H for im in coco["images"])


# ------------------------------------------------------------------------------------------------ dispatch


def test_load_samples_dispatch_and_hints(interchange_root: Path, tmp_path: Path):
    assert load_samples(str(interchange_root)) == read_interchange(interchange_root)
    assert load_samples(f"interchange:{interchange_root}", "val") == read_interchange(interchange_root, "val")
    with pytest.raises(DatasetFormatError, match="not a directory"):
        load_samples(str(tmp_path / "missing"))
    _write_rrsisd_by_hand(tmp_path / "r")
    with pytest.raises(DatasetFormatError, match="rrsis-d:"):
        load_samples(str(tmp_path / "r"))
    _write_refsegrs_by_hand(tmp_path / "s")
    with pytest.raises(DatasetFormatError, match="refsegrs:"):
        load_samples(str(tmp_path / "s"))
    with pytest.raises(DatasetFormatError, match="no path"):
        load_samples("refsegrs:")
    with pytest.raises(ValueError):
        load_samples(str(interchange_root), split="training")
