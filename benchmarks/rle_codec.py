"""Benchmark: labelstudio.brush.mask_to_rle vs the SDK's pure-Python mask2rle.

Run:  .venv/bin/python benchmarks/rle_codec.py [size]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

# the repository first: run as a script, this folder comes first on sys.path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_mask(size: int = 4096, seed: int = 0) -> np.ndarray:
    """A realistic segmentation mask: a few filled ellipses and convex polygons."""
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[:size, :size]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(4):  # ellipses
        cy, cx = rng.uniform(0.1, 0.9, 2) * size
        ry, rx = rng.uniform(0.03, 0.15, 2) * size
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    for _ in range(3):  # convex polygons (intersection of half-planes)
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        r = rng.uniform(0.04, 0.12) * size
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 9)))
        py, px = cy + r * np.sin(angles), cx + r * np.cos(angles)
        inside = np.ones((size, size), dtype=bool)
        for k in range(angles.size):
            y0, x0 = py[k], px[k]
            y1, x1 = py[(k + 1) % angles.size], px[(k + 1) % angles.size]
            # counter-clockwise vertices: interior on the left of each edge
            inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
        mask |= inside
    return mask


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_rle(size: int = 4096, repeats: int = 5, sdk_repeats: int = 2) -> dict:
    """Time SDK mask2rle vs ours on a ``size`` x ``size`` mask; check identical output.

    Ours is best of ``repeats``, the SDK best of ``sdk_repeats`` (encode) and a
    single run (decode).  Times are in seconds.
    """
    from label_studio_sdk.converter.brush import decode_rle, mask2rle

    from labelstudio.brush import mask_to_rle, rle_to_mask

    mask = make_mask(size)
    t_sdk, rle_sdk = _best(lambda: mask2rle(mask.astype(np.uint8) * 255), sdk_repeats)
    t_ours, rle_ours = _best(lambda: mask_to_rle(mask), repeats)
    t_dec, decoded = _best(lambda: rle_to_mask(rle_ours, size, size), repeats)
    t_sdk_dec, sdk_rgba = _best(lambda: decode_rle(rle_sdk), 1)
    sdk_decoded = sdk_rgba.reshape(size, size, 4)[:, :, 3] > 0
    return {
        "size": size,
        "coverage": float(mask.mean()),
        "rle_bytes": len(rle_ours),
        "identical": rle_sdk == rle_ours,
        "roundtrip": bool(np.array_equal(decoded, mask)),
        "decode_matches_sdk": bool(np.array_equal(decoded, sdk_decoded)),
        "sdk_encode_s": t_sdk,
        "ours_encode_s": t_ours,
        "speedup": t_sdk / t_ours,
        "sdk_decode_s": t_sdk_dec,
        "ours_decode_s": t_dec,
        "decode_speedup": t_sdk_dec / t_dec,
    }


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    r = bench_rle(size)
    print(
        f"{r['size']}x{r['size']} mask, {r['coverage']:.1%} on, {r['rle_bytes']} RLE bytes\n"
        f"  encode  SDK mask2rle : {r['sdk_encode_s'] * 1e3:9.1f} ms (best of 2)\n"
        f"          mask_to_rle  : {r['ours_encode_s'] * 1e3:9.1f} ms (best of 5)\n"
        f"          speed-up     : {r['speedup']:9.1f}x   identical: {r['identical']}\n"
        f"  decode  SDK decode_rle: {r['sdk_decode_s'] * 1e3:8.1f} ms (1 run)\n"
        f"          rle_to_mask  : {r['ours_decode_s'] * 1e3:9.1f} ms (best of 5)\n"
        f"          speed-up     : {r['decode_speedup']:9.1f}x   "
        f"matches SDK: {r['decode_matches_sdk']}   round-trip: {r['roundtrip']}"
    )
    if not (r["identical"] and r["roundtrip"] and r["decode_matches_sdk"]):
        sys.exit(1)
