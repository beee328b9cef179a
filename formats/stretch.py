"""From raw bands to 8-bit display values: which bands, and how they are stretched.

* `parse_bands("4,3,2")` -> [4, 3, 2]: 1-based band indices (3 -> RGB, 1 -> grey).
* `parse_stretch("2,98" | "auto" | "none" | "minmax")`: the stretch mode.
* `compute_stretch(sample, valid, mode)` -> `Stretch(lo, hi)`: per-band parameters from a sample of the raw bands
  (percentiles over valid pixels only; "auto" keeps 8-bit data and stretches anything else 2-98 %).
* `Stretch.apply(raw, nodata)`: the per-band linear map to uint8, nodata pixels -> 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

DEFAULT_STRETCH = (2.0, 98.0)


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
