"""Image and mask geometry shared by training, evaluation and the predictor.

The model sees an S x S frame: the image resized so that its longest side is S (aspect kept), placed at the
top-left, zero-padded (as SAM does). Masks come back by cropping the frame to the resized image and resizing
to the original size.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resized_shape(h: int, w: int, size: int) -> Tuple[int, int]:
    scale = size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def image_to_frame(image: np.ndarray, size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """H x W x 3 uint8 -> (3 x S x S float in [0, 1], (h', w') of the resized image inside the frame)."""
    h, w = image.shape[:2]
    nh, nw = resized_shape(h, w, size)
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    frame = torch.zeros(3, size, size)
    frame[:, :nh, :nw] = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
    return frame, (nh, nw)


def mask_to_frame(mask: np.ndarray, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """H x W bool -> (1 x S x S float target in {0,1} (area-averaged then >= 0.5), 1 x S x S valid-pixel mask)."""
    h, w = mask.shape
    nh, nw = resized_shape(h, w, size)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    if (nh, nw) != (h, w):
        m = F.interpolate(m, size=(nh, nw), mode="area" if nh < h else "nearest")
    target = torch.zeros(1, size, size)
    target[:, :nh, :nw] = (m[0] >= 0.5).float()
    valid = torch.zeros(1, size, size)
    valid[:, :nh, :nw] = 1.0
    return target, valid


def logits_to_original(
    logits: torch.Tensor, frame_size: int, resized: Tuple[int, int], original: Tuple[int, int]
) -> torch.Tensor:
    """Low-res logits B x 1 x m x m over the S x S frame -> B x H x W logits at the original image size."""
    if logits.shape[-1] != frame_size:
        logits = F.interpolate(logits, size=(frame_size, frame_size), mode="bilinear", align_corners=False)
    crop = logits[..., : resized[0], : resized[1]]
    if tuple(crop.shape[-2:]) != tuple(original):
        crop = F.interpolate(crop, size=tuple(original), mode="bilinear", align_corners=False)
    return crop[:, 0]


def resize_at(frame: torch.Tensor, size: Tuple[int, int], ys: np.ndarray, xs: np.ndarray) -> torch.Tensor:
    """The h x w array `frame` bilinearly resized to `size` (H, W), as `F.interpolate(..., mode="bilinear",
    align_corners=False)` computes it, at the output pixels (ys[k], xs[k]) only (K values, float64; within
    1e-4 of the full resize for logits of magnitude ~10: float rounding). For deciding from a few pixels of a
    large image without making all H x W of them."""
    f = frame.double()

    def source(dst: np.ndarray, n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, torch.Tensor]:
        # the source coordinate in float32, as torch's kernel computes it (float64 here was 3x further off)
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum(scale * (np.asarray(dst, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), torch.from_numpy((src - i0).astype(np.float64))

    y0, y1, ly = source(ys, f.shape[0], size[0])
    x0, x1, lx = source(xs, f.shape[1], size[1])
    top = (1 - lx) * f[y0, x0] + lx * f[y0, x1]
    bottom = (1 - lx) * f[y1, x0] + lx * f[y1, x1]
    return (1 - ly) * top + ly * bottom


def logits_to_frame(logits: torch.Tensor, frame_size: int, resized: Tuple[int, int], m: int,
                    padding: torch.Tensor) -> torch.Tensor:
    """The inverse of `logits_to_original`: H x W logits at the original size -> 1 x 1 x m x m logits over the
    S x S frame; the frame's padding (outside `resized`) is taken from `padding` (1 x 1 x m x m, e.g. the
    model's own answer there)."""
    frame = F.interpolate(padding.float(), size=(frame_size, frame_size), mode="bilinear", align_corners=False)
    if tuple(logits.shape[-2:]) != tuple(resized):
        logits = F.interpolate(logits[None, None], size=tuple(resized), mode="bilinear", align_corners=False)[0, 0]
    frame[..., : resized[0], : resized[1]] = logits
    if m != frame_size:
        frame = F.interpolate(frame, size=(m, m), mode="bilinear", align_corners=False)
    return frame


def point_to_frame(x: float, y: float, resized: Tuple[int, int], original: Tuple[int, int]) -> Tuple[float, float]:
    """A point in original-image pixels (x right, y down) -> the same point in the S x S frame's pixels.

    resized = (h', w') of the image inside the frame, original = (H, W); the frame holds the resized image at
    its top-left, so this is a pure scale per axis."""
    return float(x) * resized[1] / original[1], float(y) * resized[0] / original[0]
