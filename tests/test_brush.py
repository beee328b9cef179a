"""labelstudio.brush: bit-exact against the Label Studio SDK's brush RLE codec."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from labelstudio.brush import brush_region, mask_to_rle, rle_to_mask


def sdk_encode(mask: np.ndarray) -> list[int]:
    return mask2rle((np.asarray(mask) != 0).astype(np.uint8) * 255)


def sdk_decode(rle, h: int, w: int) -> np.ndarray:
    return decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 0


def check_all(mask: np.ndarray) -> list[int]:
    """Encoder identical to the SDK's, and both decoders give the mask back."""
    mask = np.asarray(mask)
    h, w = mask.shape
    rle = mask_to_rle(mask)
    assert rle == sdk_encode(mask)
    assert all(type(v) is int and 0 <= v <= 255 for v in rle)
    expected = mask != 0
    decoded = rle_to_mask(rle, h, w)
    assert decoded.dtype == np.bool_ and decoded.shape == (h, w)
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(sdk_decode(rle, h, w), expected)
    return rle


# ---------------------------------------------------------------- test streams


class BitWriter:
    """Writes any brush-RLE stream (header fields, literal and repeated runs)."""

    def __init__(self) -> None:
        self.bits: list[str] = []

    def put(self, value: int, n: int) -> None:
        self.bits.append(format(value, f"0{n}b")[-n:] if n else "")

    def header(self, num: int, word_size: int = 8, sizes=(3, 4, 8, 16)) -> None:
        self.put(num, 32)
        self.put(word_size - 1, 5)
        for s in sizes:
            self.put(s - 1, 4)

    def to_bytes(self) -> list[int]:
        s = "".join(self.bits)
        s += "0" * (-len(s) % 8)
        return [int(s[i : i + 8], 2) for i in range(0, len(s), 8)]


def blobs(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:h, :w]
    m = np.zeros((h, w), dtype=bool)
    for _ in range(3):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(1, h / 3 + 1), rng.uniform(1, w / 3 + 1)
        m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return m


def row_with_run(run: int, pad: int = 2) -> np.ndarray:
    m = np.zeros((1, run + 2 * pad), dtype=bool)
    m[0, pad : pad + run] = True
    return m


# ---------------------------------------------------------------- encoder


FIXED = {
    "1x1 empty": np.zeros((1, 1), bool),
    "1x1 full": np.ones((1, 1), bool),
    "3x7 empty": np.zeros((3, 7), bool),
    "3x7 full": np.ones((3, 7), bool),
    "3x7 single": np.pad(np.ones((1, 1), bool), ((1, 1), (4, 2))),
    "single first pixel": np.pad(np.ones((1, 1), bool), ((0, 9), (0, 12))),
    "single last pixel": np.pad(np.ones((1, 1), bool), ((9, 0), (12, 0))),
    "checkerboard 17x33": (np.indices((17, 33)).sum(0) % 2).astype(bool),
    "stripes 8x64": np.tile(np.arange(64) % 4 < 2, (8, 1)),
    "blobs 64x48": blobs(64, 48, 0),
    "blobs 131x97": blobs(131, 97, 1),
    "513x257 empty": np.zeros((513, 257), bool),
    "513x257 full": np.ones((513, 257), bool),
    "513x257 blobs": blobs(513, 257, 2),
    "513x257 noise": np.random.default_rng(3).random((513, 257)) < 0.3,
    "column 300x1": np.arange(300)[:, None] % 7 < 3,
}


@pytest.mark.parametrize("name", list(FIXED))
def test_identical_to_sdk(name):
    check_all(FIXED[name])


# Pixel runs around every token-size threshold: 4*r bytes <= 8, 16, 256, and
# multiples of 65536 bytes (16384 pixels), where the SDK splits long runs.
RUNS = [1, 2, 3, 4, 5, 63, 64, 65, 66, 16383, 16384, 16385, 32767, 32768, 32769, 49152, 49153]


@pytest.mark.parametrize("run", RUNS)
def test_run_length_thresholds(run):
    check_all(row_with_run(run))
    check_all(~row_with_run(run, pad=1))


def test_long_runs_across_rows():
    m = np.zeros((40, 1000), bool)
    m[3:20] = True  # 17000-pixel run, crosses the 65536-byte split
    m[25, 10] = True
    check_all(m)


@pytest.mark.parametrize("block, chunk", [(1, 1), (7, 3), (64, 5)])
def test_block_and_chunk_boundaries(monkeypatch, block, chunk):
    """The encoder scans pixels and packs runs in blocks: make blocks tiny."""
    import labelstudio.brush as brush

    monkeypatch.setattr(brush, "_RUN_BLOCK", block)
    monkeypatch.setattr(brush, "_RUNS_PER_CHUNK", chunk)
    for m in (FIXED["blobs 64x48"], FIXED["checkerboard 17x33"], FIXED["1x1 full"],
              np.zeros((2, 3), bool), row_with_run(16385), row_with_run(40000, pad=9)):
        check_all(m)


def test_dtypes_and_layouts():
    rng = np.random.default_rng(4)
    base = rng.random((23, 29)) < 0.4
    u8 = base.astype(np.uint8) * rng.integers(1, 256, base.shape).astype(np.uint8)
    ref = sdk_encode(base)
    assert mask_to_rle(u8) == ref  # any non-zero value is "on"
    assert mask_to_rle(base.astype(np.int64) * -3) == ref
    assert mask_to_rle(base.astype(np.float32) * 0.5) == ref
    assert mask_to_rle(base.astype(np.uint8) * 255) == mask2rle(base.astype(np.uint8) * 255)
    # non-contiguous views
    big = rng.random((40, 60)) < 0.5
    for view in (big.T, big[::2, 1::3], big[:, ::-1]):
        check_all(view)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24)))
def test_property_random_masks(mask):
    check_all(mask)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40000), min_size=1, max_size=6), st.booleans())
def test_property_long_runs(runs, first_on):
    vals = np.arange(len(runs)) % 2 == (0 if first_on else 1)
    check_all(np.repeat(vals, runs)[None, :])


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.bool_, st.integers(1, 70)))
def test_packed_change_points_equal_a_pixelwise_compare(flat):
    from labelstudio.brush import _bool_change_points

    expected = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    assert np.array_equal(_bool_change_points(flat), expected)


def test_encoder_rejects_bad_input():
    for bad in (np.zeros((2, 3, 4), bool), np.zeros(5, bool), np.zeros((0, 4), bool),
                np.zeros((4, 0), bool), np.array([["a", "b"]])):
        with pytest.raises(ValueError):
            mask_to_rle(bad)


# ---------------------------------------------------------------- decoder


def test_decoder_general_streams():
    """Literal runs, other field sizes and word sizes, RGB != alpha."""
    h, w = 2, 3  # 24 words
    bw = BitWriter()
    bw.header(24, word_size=8, sizes=(2, 5, 1, 16))
    bw.put(0, 1), bw.put(1, 2), bw.put(5, 5)  # 6 literal words
    for v in (9, 9, 9, 0, 0, 0):
        bw.put(v, 8)
    bw.put(1, 1), bw.put(2, 2), bw.put(1, 1)  # 2 x 7: pixel 0 rgba (9,9,9,0), pixel 1 (0,0,7,7)
    bw.put(7, 8)
    bw.put(1, 1), bw.put(1, 2), bw.put(15, 5)  # 16 x 0 -> pixels 2..5 off
    bw.put(0, 8)
    rle = bw.to_bytes()
    expected = np.array([[False, True, False], [False, False, False]])
    np.testing.assert_array_equal(sdk_decode(rle, h, w), expected)
    np.testing.assert_array_equal(rle_to_mask(rle, h, w), expected)

    bw = BitWriter()  # 1-bit words
    bw.header(8, word_size=1, sizes=(1, 1, 1, 1))
    bw.put(0, 1), bw.put(0, 2), bw.put(1, 1), bw.put(1, 1), bw.put(0, 1)
    bw.put(1, 1), bw.put(3, 2), bw.put(1, 1), bw.put(0, 1)
    bw.put(1, 1), bw.put(0, 2), bw.put(1, 1), bw.put(1, 1)
    bw.put(1, 1), bw.put(0, 2), bw.put(1, 1), bw.put(1, 1)
    rle = bw.to_bytes()
    np.testing.assert_array_equal(rle_to_mask(rle, 1, 2), sdk_decode(rle, 1, 2))
    np.testing.assert_array_equal(rle_to_mask(rle, 1, 2), [[False, True]])


@st.composite
def general_streams(draw):
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    num = h * w * 4
    word_size = draw(st.integers(1, 8))
    sizes = draw(st.lists(st.integers(1, 6), min_size=4, max_size=4))
    word = st.integers(0, (1 << word_size) - 1)
    bw = BitWriter()
    bw.header(num, word_size, sizes)
    i = 0
    while i < num:
        idx = draw(st.integers(0, 3))
        n = min(draw(st.integers(0, (1 << sizes[idx]) - 1)), num - i - 1)
        rep = draw(st.booleans())
        bw.put(int(rep), 1), bw.put(idx, 2), bw.put(n, sizes[idx])
        for _ in range(1 if rep else n + 1):
            bw.put(draw(word), word_size)
        i += n + 1
    return bw.to_bytes(), h, w


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(general_streams())
def test_property_decoder_matches_sdk(stream):
    rle, h, w = stream
    np.testing.assert_array_equal(rle_to_mask(rle, h, w), sdk_decode(rle, h, w))


def test_decoder_accepts_other_containers_and_ignores_trailing_bytes():
    m = blobs(20, 30, 5)
    rle = mask_to_rle(m)
    for r in (tuple(rle), np.array(rle, dtype=np.int64), bytes(rle), rle + [0, 0, 123]):
        np.testing.assert_array_equal(rle_to_mask(r, 20, 30), m)


def header_only(num: int) -> list[int]:
    bw = BitWriter()
    bw.header(num)
    return bw.to_bytes()


@pytest.mark.parametrize(
    "rle, h, w",
    [
        ([], 1, 1),
        ([0] * 6, 1, 1),  # shorter than the 53-bit header
        (header_only(4), 1, 1),  # header, no runs
        (header_only(2**32 - 1), 1, 1),  # absurd declared size
        (header_only(4 * 30000 * 30000), 30000, 30000),  # huge but consistent: truncated
        ([0, 0, 0, 0] + [255] * 20, 1, 1),
        ([1.5] * 10, 1, 1),
        (["a"] * 10, 1, 1),
        ([None] * 10, 1, 1),
        ([[0, 1]] * 10, 1, 1),
        ([True] * 10, 1, 1),
        ("0000000000", 1, 1),
        (12345, 1, 1),
        ([0] * 9 + [256], 1, 1),
        ([0] * 9 + [-1], 1, 1),
        ([0] * 9 + [2**70], 1, 1),
    ],
)
def test_decoder_rejects_malformed(rle, h, w):
    t0 = time.perf_counter()
    with pytest.raises(ValueError):
        rle_to_mask(rle, h, w)
    assert time.perf_counter() - t0 < 1.0


def test_decoder_rejects_size_mismatch_and_bad_shape():
    m = blobs(12, 10, 6)
    rle = mask_to_rle(m)
    # Only h * w is in the stream: a transposed shape (10, 12) cannot be detected.
    for h, w in ((12, 11), (13, 10), (1, 1), (0, 0), (-12, -10), (0, 120)):
        with pytest.raises(ValueError):
            rle_to_mask(rle, h, w)
    for h, w in ((12.5, 10), (True, 10), ("12", 10), (None, 10)):
        with pytest.raises(ValueError):
            rle_to_mask(rle, h, w)
    np.testing.assert_array_equal(rle_to_mask(rle, np.int64(12), 10.0), m)


def test_decoder_rejects_every_truncation():
    m = blobs(30, 40, 7)
    rle = mask_to_rle(m)
    # The SDK pads with 1..8 zero bits, so only the last byte may be dispensable.
    for cut in range(len(rle) - 1):
        with pytest.raises(ValueError):
            rle_to_mask(rle[:cut], 30, 40)


def test_decoder_rejects_run_past_declared_length():
    bw = BitWriter()
    bw.header(8)
    bw.put(1, 1), bw.put(1, 2), bw.put(11, 4), bw.put(255, 8)  # 12 words, 8 declared
    with pytest.raises(ValueError, match="past"):
        rle_to_mask(bw.to_bytes(), 1, 2)
    bw = BitWriter()
    bw.header(4)
    bw.put(0, 1), bw.put(0, 2), bw.put(4, 3)  # 5 literal words, 4 declared
    with pytest.raises(ValueError, match="past"):
        rle_to_mask(bw.to_bytes() + [0] * 8, 1, 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.lists(st.integers(0, 255), max_size=40))
def test_property_garbage_body(h, w, body):
    """A right header with a random body: ValueError or a mask, fast, never a hang."""
    rle = header_only(h * w * 4)[:6] + body
    try:
        out = rle_to_mask(rle, h, w)
    except ValueError:
        return
    assert out.shape == (h, w) and out.dtype == np.bool_
    try:
        ref = sdk_decode(rle, h, w)
    except (ValueError, OverflowError):  # the SDK can't read it (e.g. words > 8 bits)
        return
    np.testing.assert_array_equal(out, ref)


# ---------------------------------------------------------------- region dict


def test_brush_region():
    m = blobs(37, 53, 8)
    r = brush_region(m, from_name="tag", to_name="image", label="building", region_id="abc")
    assert r == {
        "id": "abc",
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": 53,
        "original_height": 37,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": sdk_encode(m), "brushlabels": ["building"]},
    }
    np.testing.assert_array_equal(rle_to_mask(r["value"]["rle"], 37, 53), m)
    a = brush_region(m, from_name="t", to_name="i", label="x")
    b = brush_region(m, from_name="t", to_name="i", label="x")
    assert isinstance(a["id"], str) and a["id"] and a["id"] != b["id"]


def test_module_imports_no_heavy_deps():
    code = (
        "import sys, labelstudio.brush; "
        "bad = {'torch', 'flask', 'label_studio_sdk'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
