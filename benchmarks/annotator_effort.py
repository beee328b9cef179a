"""Benchmark: annotator effort in clicks (issue 10 item 7), simulated annotator, in-process.

Protocol (RITM / SAM NoC): after each answer the annotator clicks at the point deepest inside the larger error
region (missed target -> positive click, false area -> negative click; `refseg_model.interactive.next_clicks`),
and every request carries all clicks so far plus the previous answer's low-res logits as mask input. Figures:

  NoC@85 / NoC@90   clicks until IoU >= 0.85 / 0.90 (0 if the expression alone gets there; at most 20, counted
                    as 20 when never reached)
  IoU@k             mean IoU after k = 0, 1, 3, 5 clicks

for three ways of working: text + clicks (expression first, then clicks), clicks only (no expression: SAM's
click tool; 0 clicks = no mask), text only (no clicks: the first answer stays).

Data: a held-out `shifted` synthetic split generated in memory with its own seed (never seen in training:
training streams use other seeds, and the `shifted` style is not the demo's training style).

What this script does NOT do yet: the same protocol through the real backend (Redis/RQ/HTTP) and the plot
docs/annotator_effort.png asked for by issue 10; see the clicks branch's report.

Run:  PYTHONPATH=. python benchmarks/annotator_effort.py [--checkpoint demo|CKPT] [--samples 100]
      [--dense add|replace] [--max-clicks 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, List, Optional

import numpy as np
import torch

REPORT_AT = (0, 1, 3, 5)
MODES = ("text+clicks", "clicks", "text")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def simulate(predictor, image: np.ndarray, gt: np.ndarray, expression: Optional[str], max_clicks: int,
             stop_at: float = 1.01, latencies: Optional[List[float]] = None) -> List[float]:
    """IoU after 0..max_clicks clicks for one sample (expression None: clicks only, IoU 0 at 0 clicks).

    Stops early once IoU >= stop_at (the rest is filled with the last IoU)."""
    from refseg_model.interactive import next_clicks

    target = torch.from_numpy(np.asarray(gt, dtype=bool))[None]
    if expression:
        p = predictor.predict_prompts(image, expression)
        pred, low_res = p.mask, p.low_res  # the first click gets the text's answer as its previous mask
    else:
        pred, low_res = np.zeros_like(gt, dtype=bool), None
    ious = [_iou(pred, gt) if expression else 0.0]
    points: List[tuple] = []
    for _ in range(max_clicks):
        if ious[-1] >= stop_at:
            ious.append(ious[-1])
            continue
        xy, positive, _ = next_clicks(torch.from_numpy(pred)[None], target)
        points.append((float(xy[0, 0]), float(xy[0, 1]), bool(positive[0])))  # pixel index, as in training
        t0 = time.perf_counter()
        [p] = predictor.predict(image, expression or None, points=list(points), mask_input=low_res)
        if latencies is not None:
            latencies.append(time.perf_counter() - t0)
        pred, low_res = p.mask, p.low_res
        ious.append(_iou(pred, gt))
    return ious


def noc(ious: List[float], threshold: float, max_clicks: int) -> int:
    for k, v in enumerate(ious):
        if v >= threshold:
            return k
    return max_clicks


def run(predictor, samples, max_clicks: int = 20) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for mode in MODES:
        curves, lat = [], []
        for image, gt, expr in samples:
            if mode == "text":
                [p] = predictor.predict(image, expr)
                curves.append([_iou(p.mask, gt)] * (max_clicks + 1))
                continue
            curves.append(simulate(predictor, image, gt, expr if mode == "text+clicks" else None, max_clicks,
                                   latencies=lat))
        arr = np.array(curves)
        out[mode] = {
            "n": len(curves),
            "NoC@85": float(np.mean([noc(c, 0.85, max_clicks) for c in curves])),
            "NoC@90": float(np.mean([noc(c, 0.90, max_clicks) for c in curves])),
            **{f"IoU@{k}": float(arr[:, k].mean()) for k in REPORT_AT if k <= max_clicks},
            "click_ms_p50": 1000 * statistics.median(lat) if lat else None,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20_261_202)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--dense", choices=["add", "replace"], default=None,
                    help="override the checkpoint's interactive_dense (how the previous mask meets the text)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from refseg_model.data.sources import synth_val_samples
    from refseg_model.predictor import RefSegPredictor

    predictor = RefSegPredictor.from_spec(args.checkpoint, cache_size=8)
    if args.dense:
        predictor.model.cfg.interactive_dense = args.dense
    samples = synth_val_samples("shifted", predictor.image_size, args.samples, seed=args.seed)
    t0 = time.time()
    res = run(predictor, samples, args.max_clicks)
    print(f"checkpoint {args.checkpoint} ({predictor.version}), dense {predictor.model.cfg.interactive_dense}, "
          f"{len(samples)} held-out shifted samples, {time.time() - t0:.0f} s")
    cols = ["NoC@85", "NoC@90"] + [f"IoU@{k}" for k in REPORT_AT if k <= args.max_clicks] + ["click_ms_p50"]
    print(f"{'mode':<12}" + "".join(f"{c:>13}" for c in cols))
    for mode, r in res.items():
        print(f"{mode:<12}" + "".join(f"{r[c]:>13.3f}" if r[c] is not None else f"{'-':>13}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "version": predictor.version,
                       "dense": predictor.model.cfg.interactive_dense, "results": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
