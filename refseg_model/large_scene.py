"""Referring segmentation on very large scenes (e.g. 10,000 x 10,000 px GeoTIFFs) with bounded memory.

The model sees a fixed S x S input (S = `predictor.image_size`, 128 for the demo model): a whole 10k scene
squeezed into it is ~78x downscaled, and anything smaller than ~80 px disappears. Three strategies:

``naive``
    One pass on an overview of the whole scene (area-averaged, longest side <= 2048, which the model resizes
    to S) and the overview logits upsampled bilinearly back to full resolution, stripe by stripe. Cost: one
    model forward + one streaming read of the file. Right only for targets that are large in the scene.

``tile``
    Sliding windows of `tile` x `tile` full-resolution pixels with `overlap` (default 25 %), each resized to S
    and run through the model (encoder batches of `batch_size`); a window's logits count only if its confidence
    (`predictor.confidence`) reaches `min_score` (so empty windows, most of a big scene, add nothing). Accepted
    windows are merged by averaging their logits with feathered weights (linear ramps over the overlap; the
    weights are normalised, so there are no seams and scene borders keep full weight); a pixel is target when
    the weighted mean logit exceeds the model threshold. Cost: ceil((H - t)/s + 1) x ceil((W - t)/s + 1)
    windows with stride s = t (1 - overlap): 729 windows for 10k px with t = 512 (one encoder forward each) and
    two streaming reads of the file. `tile` should make objects appear at the scale the model was trained on
    (tile ~ S x scene GSD / training GSD).
    Each window reads the expression on its own: absolute positions ("the building in the top left") and
    superlatives ("the largest pond") are then judged per window, which is wrong for the scene. Use
    ``coarse``/``auto`` for such expressions.

``coarse`` (coarse-to-fine)
    The overview pass localizes the target on the *whole* scene (this is where "top left", "largest", "next to
    the road" are resolved); its mask, dilated by `margin` px, becomes regions of interest (ROIs), and only the
    windows that cover the ROIs run at full resolution, as in ``tile``. The fine result is kept only inside the
    dilated overview mask (a fine window cannot pick another object that the overview did not refer to); ROI
    pixels that no accepted fine window covers keep the overview's (upsampled) answer. Cost: one overview forward
    + the windows over the ROIs (a few for a compact target), one streaming read + reads of the ROI windows.

``auto`` (default)
    ``coarse`` when the overview finds the target (non-empty mask with confidence >= `min_score`), else ``tile``.

Memory is bounded by design: the file is read window by window (tifffile, only the TIFF tiles/strips a window
touches are decoded), the overview is built in row blocks, full-resolution float logits exist only for one row
band of windows (two `tile` x W float32 accumulators, 41 MB for W = 10k, t = 512), and the output is one
H x W bool mask (100 MB for 10k x 10k; the GeoTIFF writer streams it out tile by tile). Peak memory for a
10k x 10k 3-band scene is a few hundred MB on top of the model, against > 2 GB for loading the scene and its
full-resolution logits at once (see benchmarks/large_scene.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from formats.georef import GeoReference
from formats.raster_reader import STATS_MAX_SIDE, RasterReader, window_starts
from formats.stretch import DEFAULT_STRETCH, Stretch, parse_bands

from .modeling.refseg import ImageEmbedding
from .predictor import RefSegPredictor, confidence
from .scene_geometry import Box, bilinear_rows, dilate, feather_weights, roi_boxes
from .transforms import logits_to_original

STRATEGIES = ("auto", "tile", "coarse", "naive")


@dataclass
class ScenePrediction:
    mask: np.ndarray  # H x W bool at full resolution
    score: float  # the overview's confidence (naive/coarse) or the best accepted window's (tile)
    strategy: str  # the strategy actually run ("auto" resolves to "coarse" or "tile")
    windows: int  # full-resolution windows run through the model
    accepted: int  # windows whose confidence reached min_score
    rois: List[Box] = field(default_factory=list)  # coarse: the regions refined at full resolution
    overview_shape: Tuple[int, int] = (0, 0)
    overview_factor: int = 1
    georef: Optional[GeoReference] = None
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ scene sources


class _Source:
    height: int
    width: int
    georef: Optional[GeoReference] = None

    def window(self, box: Box) -> Tuple[np.ndarray, Optional[np.ndarray]]:  # (h x w x 3 uint8, nodata or None)
        raise NotImplementedError

    def overview(self) -> Tuple[np.ndarray, Optional[np.ndarray], int]:  # (uint8 rgb, valid or None, factor)
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ArraySource(_Source):
    def __init__(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
        self.image = image
        self.height, self.width = image.shape[:2]

    def window(self, box: Box):
        r0, c0, h, w = box
        return self.image[r0: r0 + h, c0: c0 + w], None

    def overview(self):
        f = max(1, math.ceil(max(self.height, self.width) / STATS_MAX_SIDE))
        if f == 1:
            return self.image, None, 1
        size = (-(-self.width // f), -(-self.height // f))
        return np.asarray(Image.fromarray(self.image).resize(size, Image.BOX)), None, f


class _TiffSource(_Source):
    def __init__(self, path: Union[str, Path], bands, stretch) -> None:
        self.reader = RasterReader(path)
        try:
            self.bands = self.reader.check_bands(parse_bands(bands))
        except Exception:
            self.reader.close()
            raise
        self.height, self.width = self.reader.shape
        self.georef = self.reader.georef
        self.stretch_mode = stretch
        self._stretch: Optional[Stretch] = None
        self._overview = None

    def overview(self):
        if self._overview is None:
            raw, valid, f = self.reader.read_overview(STATS_MAX_SIDE, self.bands)
            if self._stretch is None:
                from formats.stretch import compute_stretch, parse_stretch

                mode = parse_stretch(self.stretch_mode) if not isinstance(self.stretch_mode, tuple) else self.stretch_mode
                if mode == "auto":
                    mode = "none" if self.reader.dtype == np.uint8 else DEFAULT_STRETCH
                self._stretch = compute_stretch(raw.astype(self.reader.dtype) if mode == "none" else raw,
                                                valid, mode)
            rgb = self._stretch.apply(raw, None if valid.all() else ~valid)
            if rgb.shape[2] == 1:
                rgb = np.repeat(rgb, 3, axis=2)
            self._overview = (rgb, None if valid.all() else valid, f)
        return self._overview

    @property
    def stretch(self) -> Stretch:
        if self._stretch is None:
            self._stretch = self.reader.stretch_params(self.bands, self.stretch_mode)
        return self._stretch

    def window(self, box: Box):
        return self.reader.read_rgb(box, self.bands, self.stretch)

    def close(self) -> None:
        self.reader.close()


# ------------------------------------------------------------------------------------------------ model helpers


@torch.inference_mode()
def predict_logits(predictor: RefSegPredictor, images: Sequence[np.ndarray], expression: str,
                   batch_size: int = 8) -> List[Tuple[np.ndarray, float]]:
    """(H x W float32 logits at each image's own size, confidence) for one expression on several images.

    Like `RefSegPredictor.predict` but keeps the logits (needed to merge windows) and skips the embedding cache
    (windows are seen once).
    """
    out: List[Tuple[np.ndarray, float]] = []
    for i in range(0, len(images), batch_size):
        chunk = list(images[i: i + batch_size])
        with predictor._lock:
            items = predictor._embed_batch(chunk)
            emb = ImageEmbedding.cat([it.embedding for it in items]).to(predictor.device)
            tok = predictor.model.encoder.tokenize([expression] * len(chunk), predictor.device)
            res = predictor.model.decode(emb, tok["input_ids"], tok["attention_mask"])
        for j, it in enumerate(items):
            lg = logits_to_original(res.mask_logits[j: j + 1].float(), predictor.image_size, it.resized,
                                    it.original)[0]
            out.append((lg.cpu().numpy().astype(np.float32, copy=False), confidence(lg)))
    return out


# ------------------------------------------------------------------------------------------------ main entry


def predict_scene(
    predictor: RefSegPredictor,
    source: Union[str, Path, np.ndarray],
    expression: str,
    strategy: str = "auto",
    tile: int = 512,
    overlap: float = 0.25,
    bands: Union[None, str, Sequence[int]] = None,
    stretch="auto",
    min_score: float = 0.3,
    margin: Optional[int] = None,
    batch_size: int = 8,
    progress: Optional[Callable[[int, int], None]] = None,
) -> ScenePrediction:
    """Segment what `expression` refers to in a large scene (a (Geo)TIFF path or an H x W x 3 uint8 array).

    Args:
        strategy: "auto" | "tile" | "coarse" | "naive" (see the module docstring).
        tile: window side in full-resolution pixels; overlap: fraction of `tile` shared by neighbours.
        bands, stretch: band selection and stretch for (Geo)TIFF sources (see imageio.load_raster).
        min_score: confidence a window (or the overview, for auto) needs to count.
        margin: coarse: dilation of the overview mask, in full-resolution px (default tile // 2).
        progress: called as progress(done, total) after each batch of windows.
    Returns:
        ScenePrediction with the full-resolution mask (nodata pixels are never target) and the georeference.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if tile < 16:
        raise ValueError(f"tile must be at least 16 px, got {tile}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    t0 = time.perf_counter()
    src: _Source = _ArraySource(source) if isinstance(source, np.ndarray) else _TiffSource(source, bands, stretch)
    try:
        H, W = src.height, src.width
        mask = np.zeros((H, W), bool)
        thr = float(predictor.threshold)
        result = ScenePrediction(mask, 0.0, strategy, 0, 0, georef=src.georef)
        ov_logits = gate = None
        f = 1
        if strategy in ("auto", "coarse", "naive"):
            ov, ov_valid, f = src.overview()
            [(ov_logits, ov_score)] = predict_logits(predictor, [ov], expression)
            if ov_valid is not None:
                ov_logits[~ov_valid] = -1e4
            result.score, result.overview_shape, result.overview_factor = ov_score, ov.shape[:2], f
            ov_mask = ov_logits > thr
            if strategy == "auto":
                strategy = "coarse" if ov_mask.any() and ov_score >= min_score else "tile"
            result.strategy = strategy
            if strategy == "naive":
                _fill_from_overview(mask, ov_logits, f, thr)
            elif strategy == "coarse" and ov_mask.any():
                m = tile // 2 if margin is None else int(margin)
                k = max(1, math.ceil(m / f))
                gate = dilate(ov_mask, k)
                result.rois = roi_boxes(gate, f, tile, H, W)
        if strategy == "tile":
            result.rois = [(0, 0, H, W)]
        if strategy in ("tile", "coarse"):
            total = sum(len(window_starts(b[2], min(tile, b[2]), max(1, int(tile * (1 - overlap))))) *
                        len(window_starts(b[3], min(tile, b[3]), max(1, int(tile * (1 - overlap)))))
                        for b in result.rois)
            best = 0.0
            for box in result.rois:
                n, acc, b = _tile_box(predictor, src, expression, box, mask, tile, overlap, thr, min_score,
                                      batch_size, gate=(gate, f) if gate is not None else None,
                                      fallback=(ov_logits, f) if strategy == "coarse" else None,
                                      progress=progress, done=result.windows, total=total)
                result.windows += n
                result.accepted += acc
                best = max(best, b)
            if strategy == "tile":
                result.score = best
        result.seconds = time.perf_counter() - t0
        return result
    finally:
        src.close()


def _fill_from_overview(mask: np.ndarray, low: np.ndarray, f: int, thr: float, rows: int = 512) -> None:
    H, W = mask.shape
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        mask[r0:r1] = bilinear_rows(low, f, r0, r1, 0, W) > thr


def _tile_box(predictor, src: _Source, expression: str, box: Box, mask: np.ndarray, tile: int, overlap: float,
              thr: float, min_score: float, batch_size: int, gate=None, fallback=None, progress=None, done=0,
              total=0) -> Tuple[int, int, float]:
    """Sliding windows over one box, merged into `mask` row band by row band. Returns (windows, accepted, best)."""
    br0, bc0, bh, bw = box
    th, tw = min(tile, bh), min(tile, bw)
    stride = max(1, int(tile * (1 - overlap)))
    ramp = max(1, tile - stride)
    rows, cols = window_starts(bh, th, stride), window_starts(bw, tw, stride)
    wy, wx = feather_weights(th, ramp), feather_weights(tw, ramp)
    weight = wy[:, None] * wx[None, :]
    acc = np.zeros((th, bw), np.float32)
    wacc = np.zeros((th, bw), np.float32)
    base = 0
    n = accepted = 0
    best = 0.0
    for i, ry in enumerate(rows):
        shift = ry - base
        if shift:
            if shift >= th:
                acc[:] = 0
                wacc[:] = 0
            else:
                acc[:-shift] = acc[shift:]
                wacc[:-shift] = wacc[shift:]
                acc[-shift:] = 0
                wacc[-shift:] = 0
            base = ry
        stripe, nodata = src.window((br0 + ry, bc0, th, bw))
        for k in range(0, len(cols), batch_size):
            cs = cols[k: k + batch_size]
            preds = predict_logits(predictor, [stripe[:, cx: cx + tw] for cx in cs], expression, batch_size)
            for cx, (logits, score) in zip(cs, preds):
                best = max(best, score)
                if score < min_score:
                    continue
                accepted += 1
                acc[:, cx: cx + tw] += logits * weight
                wacc[:, cx: cx + tw] += weight
            n += len(cs)
            if progress is not None:
                progress(done + n, total)
        fin = (rows[i + 1] - ry) if i + 1 < len(rows) else th
        a, w = acc[:fin], wacc[:fin]
        out = (w > 0) & (a > thr * w)
        r0, r1 = br0 + ry, br0 + ry + fin
        if fallback is not None:
            low, f = fallback
            uncovered = w == 0
            if uncovered.any():
                out |= uncovered & (bilinear_rows(low, f, r0, r1, bc0, bc0 + bw) > thr)
        if gate is not None:
            g, f = gate
            ri = np.minimum(np.arange(r0, r1) // f, g.shape[0] - 1)
            ci = np.minimum(np.arange(bc0, bc0 + bw) // f, g.shape[1] - 1)
            out &= g[ri][:, ci]
        if nodata is not None:
            out &= ~nodata[:fin]
        mask[r0:r1, bc0: bc0 + bw] = out
    return n, accepted, best
