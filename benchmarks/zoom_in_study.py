"""Study: RITM-style zoom-in on the annotator-effort protocol (issue 10's NoF plateau). Not in the product yet.

Most NoC@85 failures are small objects (benchmarks/annotator_effort.py, NoF@85 by target area): the demo's SAM
image embedding is 32 x 32 for a 128 px frame, so a 10 x 12 px object covers about 3 x 3 tokens. Zoom-in
(RITM's `ZoomIn`, FocalClick) answers the second and later clicks on a crop around the current mask and the
positive clicks (expanded by `--expand`, at least `--min-crop` px, square, inside the image), resized to the model's
input, and pastes the crop's logits back into the full-image logits; the crop gets the clicks that fall inside it
and the previous logits cropped to it; the expression is left out on crops (its spatial words describe the whole
scene). `--max-object N` zooms only while the current mask's bounding box is at most N px on its longer side.

The same simulated annotator as `annotator_effort.py` (`interactive.next_clicks`, all clicks so far, previous
logits as mask input), in-process, on the same held-out samples (seed 20_261_202). Prints NoC/NoF/IoU@k and NoF@85
by target area, with and without zoom-in, side by side in one run.

Why it is not in the predictor yet: a zoomed answer sometimes collapses (IoU 0.98 -> 0.47 at the first zoomed
click, then recovers over the next clicks): the model never saw upsampled crops in training. Training with crops
(scale augmentation) or a guard that keeps the full-image answer when the zoomed one disagrees with the clicks are
the next steps.

Run:  PYTHONPATH=. python benchmarks/zoom_in_study.py [--checkpoint demo] [--samples 100] [--style default]
      [--min-crop 40] [--expand 1.4] [--max-object 24] [--modes text+clicks,clicks]
"""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from annotator_effort import failures_by_area, summarise

from formats.metrics import sample_iou
from refseg_model.data.sources import synth_val_samples
from refseg_model.interactive import next_clicks
from refseg_model.predictor import RefSegPredictor
from refseg_model.transforms import logits_to_original

Point = Tuple[float, float, bool]


def crop_square(mask: np.ndarray, points: Sequence[Point], expand: float, min_crop: int) -> Tuple[int, int, int]:
    """(x0, y0, side) of the square crop around `mask` and the positive `points`, expanded, inside the image."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    xs = np.concatenate([xs, [p[0] for p in points if p[2]]])
    ys = np.concatenate([ys, [p[1] for p in points if p[2]]])
    side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) * expand
    side = int(round(min(max(side, min_crop), h, w)))
    x0 = int(round((xs.min() + xs.max() + 1 - side) / 2))
    y0 = int(round((ys.min() + ys.max() + 1 - side) / 2))
    return min(max(0, x0), w - side), min(max(0, y0), h - side), side


def longest_side(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    return int(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))


def agreement(mask: np.ndarray, points: Sequence[Point]) -> int:
    """Clicks the mask agrees with: positive clicks inside it, negative ones outside."""
    return sum(bool(mask[int(y), int(x)]) == positive for x, y, positive in points)


def simulate(predictor: RefSegPredictor, image: np.ndarray, gt: np.ndarray, expression: Optional[str],
             max_clicks: int, min_crop: int, expand: float, max_object: int, guard: str = "none") -> List[float]:
    """IoU after 0..max_clicks clicks; min_crop 0 = no zoom-in (the same answers as `simulate_clicks`).
    guard: on a zoomed click also answer on the full image and keep the zoomed answer only if it agrees with
    at least as many clicks ("clicks") or has at least the full answer's predicted IoU ("iou"); "none" keeps it."""
    h, w = gt.shape
    size, m = predictor.image_size, predictor.model.sam.mask_input_size
    target = torch.from_numpy(np.asarray(gt, dtype=bool))[None]
    if expression:
        low = predictor.predict_prompts(image, expression).low_res
        logits = logits_to_original(low, size, (h, w), (h, w))[0]
    else:
        logits = torch.full((h, w), -20.0)
    pred = (logits > predictor.threshold).numpy()
    ious = [sample_iou(pred, gt) if expression else 0.0]
    points: List[Point] = []
    for k in range(max_clicks):
        xy, positive, _ = next_clicks(torch.from_numpy(pred)[None], target)
        points.append((float(xy[0, 0]), float(xy[0, 1]), bool(positive[0])))
        zoom = k > 0 and min_crop > 0 and pred.any() and longest_side(pred) <= max_object
        if not zoom or guard != "none":
            prev = None if (k == 0 and not expression) else F.interpolate(logits[None, None], size=(m, m),
                                                                          mode="bilinear", align_corners=False)
            [p] = predictor.predict(image, expression or None, points=list(points), mask_input=prev)
            full = logits_to_original(p.low_res, size, (h, w), (h, w))[0]
            full_iou = p.iou_pred
        if not zoom:
            logits = full
        else:
            x0, y0, s = crop_square(pred, points, expand, min_crop)
            inside = [(x - x0, y - y0, pos) for x, y, pos in points if x0 <= x < x0 + s and y0 <= y < y0 + s]
            prev = F.interpolate(logits[y0:y0 + s, x0:x0 + s][None, None], size=(m, m), mode="bilinear",
                                 align_corners=False)
            [p] = predictor.predict(np.ascontiguousarray(image[y0:y0 + s, x0:x0 + s]), None, points=inside,
                                    mask_input=prev)
            logits = logits.clone()
            logits[y0:y0 + s, x0:x0 + s] = logits_to_original(p.low_res, size, (size, size), (s, s))[0]
            if guard == "clicks" and (agreement((logits > predictor.threshold).numpy(), points)
                                      < agreement((full > predictor.threshold).numpy(), points)):
                logits = full
            elif guard == "iou" and p.iou_pred < full_iou:
                logits = full
        pred = (logits > predictor.threshold).numpy()
        ious.append(sample_iou(pred, gt))
    return ious


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--style", default="default", choices=["default", "shifted"])
    ap.add_argument("--min-crop", type=int, default=40)
    ap.add_argument("--expand", type=float, default=1.4)
    ap.add_argument("--max-object", type=int, default=24)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--modes", default="text+clicks,clicks")
    ap.add_argument("--guard", default="none", choices=["none", "clicks", "iou"])
    args = ap.parse_args()
    torch.manual_seed(0)
    predictor = RefSegPredictor.from_spec(args.checkpoint, cache_size=64)
    samples = synth_val_samples(args.style, predictor.image_size, args.samples, seed=20_261_202)
    areas = [int(gt.sum()) for _, gt, _ in samples]
    print(f"checkpoint {args.checkpoint} ({predictor.version}), {len(samples)} held-out {args.style} samples; zoom-in: "
          f"min crop {args.min_crop} px, expand {args.expand}, objects up to {args.max_object} px, guard {args.guard}")
    print(f"{'mode':<26}{'NoC@85':>8}{'NoC@90':>8}{'NoF@85':>8}{'IoU@1':>8}{'IoU@3':>8}{'IoU@5':>8}  NoF@85 by area")
    for mode in args.modes.split(","):
        for label, min_crop in (("full image", 0), ("zoom-in", args.min_crop)):
            curves = [simulate(predictor, img, gt, expr if mode == "text+clicks" else None, args.max_clicks,
                               min_crop, args.expand, args.max_object, args.guard) for img, gt, expr in samples]
            r = summarise(curves, [], args.max_clicks)
            by_area = " ".join(f"{k} {v[0]}/{v[1]}" for k, v in failures_by_area(curves, areas).items())
            print(f"{mode + ', ' + label:<26}{r['NoC@85']:>8.2f}{r['NoC@90']:>8.2f}{r['NoF@85']:>8d}"
                  f"{r['IoU@1']:>8.3f}{r['IoU@3']:>8.3f}{r['IoU@5']:>8.3f}  {by_area}", flush=True)


if __name__ == "__main__":
    main()
