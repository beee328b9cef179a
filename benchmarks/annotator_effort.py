"""Benchmark: annotator effort in clicks (issue 10 item 7), simulated annotator, in-process.

Protocol (RITM / SAM NoC): after each answer the annotator clicks at the point deepest inside the larger error
region (missed target -> positive click, false area -> negative click; `refseg_model.interactive.next_clicks`),
and every request carries all clicks so far plus the previous answer's low-res logits as mask input. Figures:

  NoC@85 / NoC@90   clicks until IoU >= 0.85 / 0.90 (0 if the expression alone gets there; at most 20, counted
                    as 20 when never reached)
  NoF@85 / NoF@90   samples that never reach 0.85 / 0.90 within the clicks (RITM's "number of failures")
  IoU@k             mean IoU after k = 0, 1, 3, 5 clicks

for three ways of working: text + clicks (expression first, then clicks), clicks only (no expression: SAM's
click tool; 0 clicks = no mask), text only (no clicks: the first answer stays).

Data: a held-out `shifted` synthetic split generated in memory with its own seed (never seen in training:
training streams use other seeds, and the `shifted` style is not the demo's training style).

`--backend` runs the same protocol through the real service as well (redis-server, one RQ worker, gunicorn;
benchmarks/bench_stack.py): each click is an interactive /predict whose context holds all keypoints so far in
Label Studio's format (percent of the image, `is_positive`), the answer's brush RLE is decoded and scored, and
the click latency through the queue is reported next to the in-process one. The text answer (0 clicks) comes
from a batch /predict. `--plot docs/annotator_effort.png` draws mean IoU against clicks for each way of working
(in-process solid, through the backend dashed), with the 0.85 / 0.90 thresholds of NoC.

Run:  PYTHONPATH=. python benchmarks/annotator_effort.py [--checkpoint demo|CKPT] [--samples 100]
      [--dense add|replace] [--max-clicks 20] [--style shifted|default] [--zoom auto|on|off] [--backend]
      [--json out.json]
      [--plot out.png]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from formats.metrics import sample_iou
from refseg_model.evaluate import simulate_clicks

REPORT_AT = (0, 1, 3, 5)
MODES = ("text+clicks", "clicks", "text")


def noc(ious: List[float], threshold: float, max_clicks: int) -> int:
    for k, v in enumerate(ious):
        if v >= threshold:
            return k
    return max_clicks


def nof(curves, threshold: float) -> int:
    """RITM's "number of failures": samples whose curve never reaches `threshold`. Each counts max_clicks in NoC,
    so NoF says how much of NoC is a plateau rather than slow progress."""
    return int(sum(max(c) < threshold for c in curves))


AREA_BUCKETS = (0, 150, 400, 1500)  # target area in pixels (of the 128 x 128 scene): where NoF@85 comes from


def failures_by_area(curves, areas, threshold: float = 0.85) -> Dict[str, List[int]]:
    """NoF by target area: {"[lo, hi)": [samples that never reach threshold, samples]} over AREA_BUCKETS."""
    edges = list(AREA_BUCKETS) + [None]
    out: Dict[str, List[int]] = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = [c for c, a in zip(curves, areas) if a >= lo and (hi is None or a < hi)]
        out[f"[{lo}, {'inf' if hi is None else hi})"] = [nof(rows, threshold), len(rows)]
    return out


def summarise(curves, latencies, max_clicks: int) -> dict:
    """IoU-after-k-clicks curves (one per sample) -> NoC@85/90, mean IoU after REPORT_AT clicks, click p50."""
    arr = np.array(curves)
    return {
        "n": len(curves),
        "NoC@85": float(np.mean([noc(c, 0.85, max_clicks) for c in curves])),
        "NoC@90": float(np.mean([noc(c, 0.90, max_clicks) for c in curves])),
        "NoF@85": nof(curves, 0.85),
        "NoF@90": nof(curves, 0.90),
        **{f"IoU@{k}": float(arr[:, k].mean()) for k in REPORT_AT if k <= max_clicks},
        "click_ms_p50": 1000 * statistics.median(latencies) if latencies else None,
        "mean_iou_by_clicks": [float(v) for v in arr.mean(axis=0)],  # k = 0..max_clicks, for the plot
    }


def run(predictor, samples, max_clicks: int = 20) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for mode in MODES:
        curves, lat = [], []
        for image, gt, expr in samples:
            if mode == "text":
                [p] = predictor.predict(image, expr)
                curves.append([sample_iou(p.mask, gt)] * (max_clicks + 1))
                continue
            curves.append(simulate_clicks(predictor, image, gt, expr if mode == "text+clicks" else None, max_clicks,
                                   latencies=lat))
        out[mode] = summarise(curves, lat, max_clicks)
        out[mode]["NoF@85_by_area"] = failures_by_area(curves, [int(np.count_nonzero(gt)) for _, gt, _ in samples])
    return out


CONFIG_TEXT_CLICKS = ('<View><Image name="image" value="$image"/><Text name="expr" value="$expression"/>'
                      '<KeyPointLabels name="click" toName="image" smart="true"><Label value="object"/>'
                      '</KeyPointLabels><BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>'
                      '</View>')
CONFIG_CLICKS_ONLY = ('<View><Image name="image" value="$image"/>'
                      '<KeyPointLabels name="click" toName="image" smart="true"><Label value="object"/>'
                      '</KeyPointLabels><BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>'
                      '</View>')


def run_backend(checkpoint: str, samples, max_clicks: int, threads: int = 1, zoom: str = "auto") -> Dict[str, dict]:
    """The protocol through redis + an RQ worker + gunicorn; text+clicks and clicks only."""
    import os
    import sys
    import tempfile
    from pathlib import Path

    import requests

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stack import ROOT, Stack, free_port, image_server, png

    from labelstudio.brush import rle_to_mask
    from refseg_model.interactive import next_clicks

    tmp = Path(tempfile.mkdtemp(prefix="refseg-effort-"))
    paths = [f"/data/upload/1/s{i}.png" for i in range(len(samples))]
    ls_url = image_server({p: png(img) for p, (img, _, _) in zip(paths, samples)})
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REFSEG_MODEL": checkpoint,
           "MODEL_DIR": str(tmp / "models"), "DEVICE": "cpu", "LABEL_STUDIO_URL": ls_url,
           "LABEL_STUDIO_API_KEY": "bench", "PREDICT_BUDGET_S": "120", "INTERACTIVE_TIMEOUT_S": "60",
           "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "CLICK_ZOOM": zoom}
    stack = Stack(env, tmp)

    def mask_of(res, shape) -> np.ndarray:
        assert "error" not in res, res.get("error")
        out = np.zeros(shape, dtype=bool)
        for r in res.get("result", []):
            out |= rle_to_mask(r["value"]["rle"], r["original_height"], r["original_width"])
        return out

    out: Dict[str, dict] = {}
    try:
        stack.start_redis()
        stack.start_worker("interactive,batch", threads, log="worker.log")
        url = stack.start_web(threads=4, timeout=120)
        stack.wait_workers(1, 300)
        for mode in ("text+clicks", "clicks"):
            text = mode == "text+clicks"
            config = CONFIG_TEXT_CLICKS if text else CONFIG_CLICKS_ONLY
            curves, lat = [], []
            for i, ((img, gt, expr), path) in enumerate(zip(samples, paths)):
                h, w = gt.shape
                task = {"id": i + 1, "data": {"image": path, **({"expression": expr} if text else {})}}
                if text:
                    r = requests.post(url + "/predict", json={"tasks": [task], "project": "1.1",
                                      "label_config": config, "params": {"context": None}}, timeout=200)
                    pred = mask_of(r.json()["results"][0], gt.shape)
                else:
                    pred = np.zeros_like(gt, dtype=bool)
                ious = [sample_iou(pred, gt) if text else 0.0]
                items: List[dict] = []
                target = torch.from_numpy(np.asarray(gt, dtype=bool))[None]
                for _ in range(max_clicks):
                    xy, positive, _ = next_clicks(torch.from_numpy(pred)[None], target)
                    items.append({"type": "keypointlabels", "from_name": "click", "to_name": "image",
                                  "is_positive": bool(positive[0]), "original_width": w, "original_height": h,
                                  "value": {"x": float(xy[0, 0]) / w * 100, "y": float(xy[0, 1]) / h * 100,
                                            "width": 0.5, "keypointlabels": ["object"]}})
                    t0 = time.perf_counter()
                    r = requests.post(url + "/predict", json={"tasks": [task], "project": "1.1",
                                      "label_config": config, "params": {"context": {"result": list(items)}}},
                                      timeout=120)
                    lat.append(time.perf_counter() - t0)
                    r.raise_for_status()
                    pred = mask_of(r.json()["results"][0], gt.shape)
                    ious.append(sample_iou(pred, gt))
                curves.append(ious)
            out[mode] = summarise(curves, lat, max_clicks)
    finally:
        stack.stop()
    return out


def _table(res: Dict[str, dict], max_clicks: int) -> None:
    cols = ["NoC@85", "NoC@90", "NoF@85", "NoF@90"] + [f"IoU@{k}" for k in REPORT_AT if k <= max_clicks] \
        + ["click_ms_p50"]
    print(f"{'mode':<12}" + "".join(f"{c:>13}" for c in cols))
    for mode, r in res.items():
        print(f"{mode:<12}" + "".join(f"{r[c]:>13.3f}" if r[c] is not None else f"{'-':>13}" for c in cols))


def plot(res: Dict[str, dict], backend: Optional[Dict[str, dict]], title: str, path: str) -> None:
    """Mean IoU after k clicks, one line per way of working; NoC's thresholds as grey lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colours = {"text+clicks": "tab:blue", "clicks": "tab:orange", "text": "tab:green"}
    for where, results, style in (("in-process", res, "-"), ("through the backend", backend or {}, "--")):
        for mode, r in results.items():
            curve = r["mean_iou_by_clicks"]
            ax.plot(range(len(curve)), curve, style, color=colours[mode], marker="o" if style == "-" else None,
                    markersize=3, label=f"{mode} ({where}): NoC@85 {r['NoC@85']:.1f}")
    for t in (0.85, 0.90):
        ax.axhline(t, color="grey", linewidth=0.8, linestyle=":")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20_261_202)
    ap.add_argument("--style", default="shifted", choices=["shifted", "default"],
                    help="scene style of the held-out samples: shifted (the benchmark) or default (the demo's "
                         "training style, other seeds: an in-distribution check)")
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--dense", choices=["add", "replace"], default=None,
                    help="override the checkpoint's interactive_dense (how the previous mask meets the text)")
    ap.add_argument("--zoom", choices=["auto", "on", "off"], default="auto",
                    help="zoom-in clicks (CLICK_ZOOM): auto = on for a checkpoint trained for it")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--backend", action="store_true", help="also through redis + RQ worker + gunicorn")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="write the IoU-against-clicks plot here (PNG)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from refseg_model.data.sources import synth_val_samples
    from refseg_model.predictor import RefSegPredictor

    predictor = RefSegPredictor.from_spec(args.checkpoint, cache_size=8, zoom=args.zoom)
    if args.dense:
        predictor.model.cfg.interactive_dense = args.dense
    samples = synth_val_samples(args.style, predictor.image_size, args.samples, seed=args.seed)
    t0 = time.time()
    res = run(predictor, samples, args.max_clicks)
    print(f"checkpoint {args.checkpoint} ({predictor.version}), dense {predictor.model.cfg.interactive_dense}, "
          f"zoom-in {'on' if predictor.zoom else 'off'}, {len(samples)} held-out {args.style} samples, "
          f"{time.time() - t0:.0f} s")
    _table(res, args.max_clicks)
    for mode in ("text+clicks", "clicks"):
        print(f"NoF@85 by target area (px: failures / samples), {mode}: "
              + ", ".join(f"{k} {f}/{n}" for k, (f, n) in res[mode]["NoF@85_by_area"].items()))
    backend = None
    if args.backend:
        if args.dense:
            print("note: --dense applies in-process only; the worker uses the checkpoint's own setting")
        t0 = time.time()
        backend = run_backend(args.checkpoint, samples, args.max_clicks, args.threads or 1, args.zoom)
        print(f"through the backend (redis + RQ worker + gunicorn), {time.time() - t0:.0f} s")
        _table(backend, args.max_clicks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "version": predictor.version, "zoom": bool(predictor.zoom),
                       "dense": predictor.model.cfg.interactive_dense, "results": res, "backend": backend}, f,
                      indent=1)
    if args.plot:
        plot(res, backend, f"{predictor.version}: {len(samples)} held-out {args.style} samples", args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
