"""Large-scene benchmark: a synthetic 10,000 x 10,000 3-band GeoTIFF, tiled vs. naive downscale.

    python benchmarks/large_scene.py [--size 10000] [--checkpoint demo|preset:tiny|DIR] [--threads 1]
                                     [--methods naive-inmemory,naive,tile,auto]

The scene: a large background (smooth ground texture with mild noise, written tile by tile: the scene never
exists in memory) with one synthetic town (`SceneGenerator(size=--town)`, objects drawn at --town/128 times
the scale of the 128-px training scenes) pasted at a fixed off-centre position, and one of its expressions
(category / colour kind, no positions: they would refer to the town, not the scene) with its ground-truth mask.

Each method runs in its own subprocess so that peak memory (ru_maxrss) is its own:
    naive-inmemory  load_image(the whole scene) + RefSegPredictor.predict (downscale to the model input,
                    logits upsampled to 10k x 10k at once) - what plain `refseg predict` would do
    naive           large_scene strategy "naive": streamed overview, stripe-wise upsampling (bounded memory)
    tile            large_scene strategy "tile": sliding windows of --tile px with 25 % overlap
    auto            large_scene strategy "auto": overview localizes, windows refine (coarse-to-fine),
                    falls back to tiling when the overview finds nothing confident
Printed per method: wall time, peak RSS, RSS after loading the model (so the method's own cost is the
difference), IoU against the ground truth, predicted pixels, windows run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def default_checkpoint() -> str:
    return "demo" if (ROOT / "refseg_model" / "assets" / "demo" / "config.json").is_file() else "preset:tiny"


# ------------------------------------------------------------------------------------------------ the scene


def make_scene(path: Path, size: int, town: int, seed: int = 0) -> dict:
    """Write the scene GeoTIFF; return the ground truth (town box, expression, mask file)."""
    from formats.georef import GeoReference
    from formats.geotiff_writer import write_geotiff
    from refseg_model.data.synth import SceneGenerator

    gen = SceneGenerator(size=town, style="default", seed=seed)
    position_words = ("left", "right", "top", "bottom", "upper", "lower", "middle", "centre", "center", "corner",
                      "next", "near", "above", "below", "between", "closest", "farthest", "edge")
    for _ in range(50):
        sc = gen.scene(difficulty=0.0, max_expressions=3)
        cands = [s for s in sc.samples
                 if not any(w in s.expression for w in position_words) and 0.003 < s.mask.mean() < 0.2]
        if cands:
            sample = max(cands, key=lambda s: s.mask.sum())
            break
    else:  # pragma: no cover
        raise RuntimeError("no suitable synthetic town")
    town_img = sc.image
    r_off, c_off = int(size * 0.61), int(size * 0.27)
    ground = np.array(town_img[:8, :8].reshape(-1, 3).mean(axis=0), np.float32)  # blend: similar ground colour

    noise = np.random.default_rng(seed).integers(-3, 4, (512, 512, 1)).astype(np.float32)  # reused per tile

    def tile_fn(r0: int, c0: int, h: int, w: int) -> np.ndarray:
        yy = np.arange(r0, r0 + h, dtype=np.float32)[:, None]
        xx = np.arange(c0, c0 + w, dtype=np.float32)[None, :]
        low = 10.0 * np.sin(yy / 531.0) * np.cos(xx / 377.0) + 6.0 * np.sin((xx + yy) / 97.0)
        img = np.clip(ground[None, None, :] + (low[..., None] + noise[:h, :w]), 0, 255).astype(np.uint8)
        # paste the town where it overlaps
        ys, ye = max(r0, r_off), min(r0 + h, r_off + town)
        xs, xe = max(c0, c_off), min(c0 + w, c_off + town)
        if ys < ye and xs < xe:
            img[ys - r0: ye - r0, xs - c0: xe - c0] = town_img[ys - r_off: ye - r_off, xs - c_off: xe - c_off]
        return img

    georef = GeoReference((0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), "EPSG:32633")  # 0.5 m UTM 33N
    write_geotiff(path, tile_fn, georef, shape=(size, size, 3), dtype=np.uint8, tile=512, level=1)
    gt_path = path.with_suffix(".gt.npy")
    np.save(gt_path, sample.mask)
    return {"scene": str(path), "size": size, "town": town, "offset": [r_off, c_off], "expression": sample.expression,
            "gt_mask": str(gt_path), "gt_pixels": int(sample.mask.sum())}


# ------------------------------------------------------------------------------------------------ one method


def run_method(method: str, meta: dict, checkpoint: str, tile: int, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from refseg_model.predictor import RefSegPredictor

    predictor = RefSegPredictor.from_spec(checkpoint, device="cpu", cache_size=0)
    rss_model = _rss_mb()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu_model = ru.ru_utime + ru.ru_stime
    t0 = time.perf_counter()
    extra = {}
    if method == "naive-inmemory":
        from formats.images import load_image

        image = load_image(meta["scene"])
        [pred] = predictor.predict(image, [meta["expression"]])
        mask = pred.mask
        del image
    else:
        from refseg_model.large_scene import predict_scene

        res = predict_scene(predictor, meta["scene"], meta["expression"], strategy=method, tile=tile)
        mask = res.mask
        extra = {"windows": res.windows, "accepted": res.accepted, "used": res.strategy}
    seconds = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - cpu_model
    gt = np.load(meta["gt_mask"])
    r, c = meta["offset"]
    inter = int((mask[r: r + gt.shape[0], c: c + gt.shape[1]] & gt).sum())
    pred_px = int(mask.sum())
    union = pred_px + int(gt.sum()) - inter
    return {"method": method, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(_rss_mb()),
            "rss_after_model_mb": round(rss_model), "iou": round(inter / union, 4) if union else 1.0,
            "pred_pixels": pred_px, **extra}


# ------------------------------------------------------------------------------------------------ driver


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--town", type=int, default=512, help="side of the pasted synthetic town (px)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--checkpoint", default=None, help="default: demo if shipped, else preset:tiny")
    ap.add_argument("--methods", default="naive-inmemory,naive,tile,auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per method (0 = torch default)")
    ap.add_argument("--workdir", default=None, help="keep the scene here (default: a temporary folder)")
    ap.add_argument("--run", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--meta", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    checkpoint = args.checkpoint or default_checkpoint()
    if args.run:
        meta = json.loads(Path(args.meta).read_text())
        print(json.dumps(run_method(args.run, meta, checkpoint, args.tile, args.threads)))
        return 0

    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    meta = make_scene(work / "scene.tif", args.size, args.town)
    write_s = time.perf_counter() - t0
    (work / "meta.json").write_text(json.dumps(meta))
    mb = os.path.getsize(meta["scene"]) / 2 ** 20
    print(f"scene: {args.size}x{args.size}x3 uint8 GeoTIFF (EPSG:32633, 0.5 m), {mb:.0f} MB deflate, written in "
          f"{write_s:.1f} s; town {args.town} px at {meta['offset']}; expression {meta['expression']!r} "
          f"({meta['gt_pixels']} target px)")
    print(f"model: {checkpoint}" + ("" if checkpoint != "preset:tiny" else
                                    " (random weights: the demo checkpoint is not shipped yet; IoU is meaningless,"
                                    " time and memory are not)") + f"; tile {args.tile}; threads {args.threads}")
    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--run", method, "--meta", str(work / "meta.json"), "--checkpoint",
               checkpoint, "--tile", str(args.tile), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{method}: failed\n{proc.stderr[-2000:]}")
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\n{'method':16s} {'wall s':>7s} {'cpu s':>7s} {'peak MB':>8s} {'model MB':>8s} {'IoU':>7s} {'pred px':>10s}  windows")
    for r in rows:
        win = f"{r.get('windows', 0)} ({r.get('accepted', 0)} accepted)" if "windows" in r else "-"
        used = f" -> {r['used']}" if r.get("used") and r["used"] != r["method"] else ""
        print(f"{r['method'] + used:16s} {r['seconds']:7.1f} {r['cpu_s']:7.1f} {r['peak_rss_mb']:8d} {r['rss_after_model_mb']:8d} "
              f"{r['iou']:7.4f} {r['pred_pixels']:10d}  {win}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
