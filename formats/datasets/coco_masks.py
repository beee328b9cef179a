"""COCO segmentations as masks: the RLE codec (uncompressed and compressed string counts) and polygons.

* `rle_decode` / `rle_encode`: {"counts", "size"} <-> H x W bool, column-major runs starting with background.
* `rle_string_to_counts` / `rle_counts_to_string`: COCO's compressed RLE strings (pycocotools maskApi.c).
* `polygons_to_mask`: COCO polygons rasterised (PIL ImageDraw, fill and outline).
* `segmentation_to_mask`: any COCO `segmentation` (polygons, an RLE dict, a list of RLE dicts: their union).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from formats.datasets.sample import DatasetFormatError


def rle_string_to_counts(s: Union[str, bytes]) -> List[int]:
    """Decode COCO's compressed RLE string (pycocotools maskApi.c rleFrString) to run lengths.

    Each count is a variable-length little-endian sequence of 5-bit groups, one character per group
    (char - 48); bit 0x20 means "more groups follow", bit 0x10 of the last group is the sign. From the fourth count
    on (index > 2) the value stored is the difference to the count two places before.
    """
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: List[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise DatasetFormatError(f"truncated compressed RLE string {data[:40]!r}")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise DatasetFormatError(f"invalid character {chr(data[p])!r} in compressed RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths as COCO's compressed RLE string (pycocotools maskApi.c rleToString)."""
    out = bytearray()
    for i, cnt in enumerate(counts):
        x = int(cnt) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C on a signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def rle_decode(rle: Dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE {"counts": [ints] or "compressed string", "size": [h, w]} to an H x W bool mask.

    Runs alternate background/target, starting with background, over the pixels in column-major order.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetFormatError(f"bad RLE object ({exc!r})") from exc
    runs = rle_string_to_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise DatasetFormatError(f"RLE counts sum to {sum(runs)} (negative runs: {any(r < 0 for r in runs)}), "
                                 f"expected h*w = {h}*{w} = {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return np.ascontiguousarray(flat.reshape((w, h)).T)  # column-major


def rle_encode(mask: np.ndarray, compressed: bool = True) -> Dict[str, Any]:
    """Encode an H x W mask (non-zero = target) as COCO RLE; compressed=True gives string counts."""
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {m.shape}")
    h, w = m.shape
    flat = m.T.reshape(-1)  # column-major
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs  # counts start with a (possibly empty) background run
    if not runs:
        runs = [0]
    return {"size": [h, w], "counts": rle_counts_to_string(runs) if compressed else [int(r) for r in runs]}


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons [[x1, y1, x2, y2, ...], ...] (PIL ImageDraw, fill and outline) to H x W bool."""
    canvas = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = [float(v) for v in poly]
        if len(pts) < 6 or len(pts) % 2:
            raise DatasetFormatError(f"polygon needs an even number (>= 6) of coordinates, got {len(pts)}")
        draw.polygon(list(zip(pts[0::2], pts[1::2])), fill=1, outline=1)
    return np.asarray(canvas) > 0


def segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (polygons, an RLE dict, or a list of RLE dicts) as an H x W bool mask.

    height/width are the image size, used by polygons; RLE objects carry their own size.
    """
    if isinstance(seg, dict):
        return rle_decode(seg)
    if isinstance(seg, list):
        if not seg:
            return np.zeros((int(height), int(width)), dtype=bool)
        if all(isinstance(part, dict) for part in seg):
            out = rle_decode(seg[0])
            for part in seg[1:]:
                nxt = rle_decode(part)
                if nxt.shape != out.shape:
                    raise DatasetFormatError(f"RLE parts of one segmentation differ in size: {out.shape} "
                                             f"vs {nxt.shape}")
                out |= nxt
            return out
        if all(isinstance(part, list) for part in seg):
            return polygons_to_mask(seg, height, width)
    raise DatasetFormatError(f"unsupported segmentation of type {type(seg).__name__}")
