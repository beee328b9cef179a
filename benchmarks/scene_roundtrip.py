"""Scene round-trip benchmark: a synthetic 10,000 x 10,000 GeoTIFF -> `refseg tasks` -> ground-truth chip masks as
Label Studio brush annotations -> `refseg export --to scene` -> the stitched GeoTIFF checked against the ground truth.

    python benchmarks/scene_roundtrip.py [--size 10000] [--chip 1024] [--overlap 128] [--layout tiled|striped]
                                         [--workdir DIR] [--keep]

The scene: 3 bands of uint16 (so the 2-98 % stretch runs), a smooth texture with noise, written tile by tile
(--layout striped: 64-row strips, as GDAL writes by default; built in the harness's memory first), a nodata
block in the top-right corner that makes a few chips nodata-only, and ~1,500 discs and boxes as the ground
truth of the expression (none in the nodata block).

Each measured step runs the real command in its own process, started by a small launcher (see LAUNCHER), so
wall time, CPU time (user + sys) and peak RSS (os.wait4's ru_maxrss) are that step's alone, imports included
(CPU time is the figure to compare on a shared machine, where wall time also counts waiting for the cores):
    tasks   refseg tasks SCENE --chip --overlap --expression --out --image-url-prefix
    stitch  refseg export --data ls-json:EXPORT --to scene OUT
Not measured as product steps (harness): writing the scene, turning the ground truth into annotations (what
annotators would do; three chips are left unannotated on purpose), and the final check, which reads the
stitched mask band by band and requires: mask == ground truth wherever an annotated chip covers the scene,
0 elsewhere, georeference identical to the scene's, the three chips reported as unannotated and the
nodata-only chips as windows without a task.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPRESSION = "the ponds and the sheds"
SEED = 0


# ------------------------------------------------------------------------------------------------ the scene
class GroundTruth:
    """Discs and boxes; `window(r0, c0, h, w)` renders the mask of any window without the whole scene."""

    def __init__(self, size: int, nodata_box, n: int, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        kind = rng.random(n) < 0.5
        r = rng.integers(0, size, n)
        c = rng.integers(0, size, n)
        a = rng.integers(4, 60, n)  # disc radius / box height
        b = rng.integers(4, 120, n)  # box width
        nr0, nc0, nr1, nc1 = nodata_box
        keep = ~((r + 130 > nr0) & (r - 130 < nr1) & (c + 130 > nc0) & (c - 130 < nc1))  # none in the nodata block
        self.kind, self.r, self.c, self.a, self.b = kind[keep], r[keep], c[keep], a[keep], b[keep]
        # bounding boxes (end-exclusive)
        self.top = np.where(self.kind, self.r - self.a, self.r)
        self.bottom = np.where(self.kind, self.r + self.a + 1, self.r + self.a)
        self.left = np.where(self.kind, self.c - self.a, self.c)
        self.right = np.where(self.kind, self.c + self.a + 1, self.c + self.b)

    def window(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w), bool)
        hit = np.flatnonzero((self.bottom > r0) & (self.top < r0 + h) & (self.right > c0) & (self.left < c0 + w))
        for i in hit:
            if self.kind[i]:
                ys, ye = max(r0, self.top[i]), min(r0 + h, self.bottom[i])
                xs, xe = max(c0, self.left[i]), min(c0 + w, self.right[i])
                yy = np.arange(ys, ye)[:, None] - self.r[i]
                xx = np.arange(xs, xe)[None, :] - self.c[i]
                out[ys - r0: ye - r0, xs - c0: xe - c0] |= yy ** 2 + xx ** 2 < self.a[i] ** 2
            else:
                ys, ye = max(r0, self.top[i]), min(r0 + h, self.bottom[i])
                xs, xe = max(c0, self.left[i]), min(c0 + w, self.right[i])
                out[ys - r0: ye - r0, xs - c0: xe - c0] = True
        return out


def write_scene(path: Path, size: int, nodata_box, truth: GroundTruth, layout: str) -> None:
    from formats.georef import GeoReference
    from formats.geotiff_writer import geotiff_tags, write_geotiff
    from formats.tiff_codecs import tifffile_module as _tifffile

    georef = GeoReference((0.3, 0.0, 600000.0, 0.0, -0.3, 5200000.0), "EPSG:32632")
    noise = np.random.default_rng(SEED).integers(0, 200, (512, 512, 3)).astype(np.uint16)
    nr0, nc0, nr1, nc1 = nodata_box

    def block(r0: int, c0: int, h: int, w: int) -> np.ndarray:
        yy = np.arange(r0, r0 + h, dtype=np.float32)[:, None, None]
        xx = np.arange(c0, c0 + w, dtype=np.float32)[None, :, None]
        base = 1500.0 + 400.0 * np.sin(yy / 700.0) * np.cos(xx / 500.0) + np.array([0.0, 150.0, 300.0], np.float32)
        img = (base + np.tile(noise, (-(-h // 512), -(-w // 512), 1))[:h, :w]).astype(np.uint16)
        img[truth.window(r0, c0, h, w)] += 900  # the targets are brighter
        ys, ye, xs, xe = max(r0, nr0), min(r0 + h, nr1), max(c0, nc0), min(c0 + w, nc1)
        if ys < ye and xs < xe:
            img[ys - r0: ye - r0, xs - c0: xe - c0] = 0  # nodata
        return img

    if layout == "tiled":
        write_geotiff(path, block, georef, nodata=0, shape=(size, size, 3), dtype=np.uint16, level=1)
        return
    rows = 64  # striped, as GDAL writes by default (one strip = a few rows of the full width)
    whole = np.empty((size, size, 3), np.uint16)  # tifffile takes whole pages, not strips, from an iterator:
    for r0 in range(0, size, 512):  # the harness holds the scene (not a measured step)
        whole[r0: r0 + 512] = block(r0, 0, min(512, size - r0), size)
    _tifffile().imwrite(path, whole, rowsperstrip=rows, photometric="rgb", planarconfig="contig",
                        compression="zlib", compressionargs={"level": 1}, extratags=geotiff_tags(georef, 0),
                        metadata=None)


# ------------------------------------------------------------------------------------------------ steps
# A small process that runs the step and reports the step's own rusage. Started from the harness directly, the
# step would inherit the harness's RSS high-water mark (subprocess forks with vfork, and exec folds the old
# address space's peak into the child's ru_maxrss): the harness may have held a whole scene.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
with open(sys.argv[1], "w") as log:
    proc = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - t0,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}))
"""


def run_measured(argv, log: Path) -> dict:
    """Run a command in its own process; its wall time, CPU time and peak RSS."""
    r = subprocess.run([sys.executable, "-c", LAUNCHER, str(log), *argv], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    m = json.loads(r.stdout)
    if m["code"] != 0:
        raise SystemExit(f"{argv[3]} failed ({m['code']}):\n{log.read_text()[-3000:]}")
    return {"wall_s": round(m["wall_s"], 1), "cpu_s": round(m["cpu_s"], 1), "peak_rss_mb": round(m["maxrss_kb"] / 1024)}


def annotate(tasks_file: Path, export_file: Path, truth: GroundTruth, skip: int = 3):
    """Ground-truth chip masks as brush annotations (empty chips: an annotation with no region); `skip` chips
    in the middle of the scene are left unannotated. Returns (annotated windows, unannotated task ids)."""
    from labelstudio.brush import brush_region

    tasks = json.loads(tasks_file.read_text())
    middle = sorted(range(len(tasks)), key=lambda i: abs(i - len(tasks) // 2))[:skip]
    annotated, unannotated = [], []
    for i, task in enumerate(tasks):
        task["id"] = i + 1
        if i in middle:
            unannotated.append(task["id"])
            continue
        r0, c0, h, w = task["data"]["chip"]["window"]
        mask = truth.window(r0, c0, h, w)
        result = [brush_region(mask, from_name="mask", to_name="image", label="target")] if mask.any() else []
        task["annotations"] = [{"id": i + 1, "result": result, "was_cancelled": False, "ground_truth": False}]
        annotated.append((r0, c0, h, w))
    export_file.write_text(json.dumps(tasks))
    return annotated, unannotated


def check(scene: Path, report: dict, truth: GroundTruth, annotated, unannotated, size: int) -> dict:
    from formats.raster_reader import RasterReader

    [group] = report["groups"]
    band = 512
    mismatched = outside = covered = target = 0
    with RasterReader(scene) as src, RasterReader(group["mask"]) as out:
        same_georef = out.georef == src.georef and out.shape == src.shape
        for r0 in range(0, size, band):
            h = min(band, size - r0)
            got = out.read_window((r0, 0, h, size))[..., 0] > 0
            cov = np.zeros((h, size), bool)
            for wr, wc, wh, ww in annotated:
                ys, ye = max(r0, wr), min(r0 + h, wr + wh)
                if ys < ye:
                    cov[ys - r0: ye - r0, wc: wc + ww] = True
            gt = truth.window(r0, 0, h, size)
            mismatched += int(np.count_nonzero(got[cov] != gt[cov]))
            outside += int(np.count_nonzero(got[~cov]))
            covered += int(cov.sum())
            target += int(got.sum())
    return {"georeference_identical": bool(same_georef), "mismatched_pixels_in_covered_area": mismatched,
            "target_pixels_outside_covered_area": outside, "covered_pixels": covered,
            "covered_pixels_reported": group["covered_pixels"], "target_pixels": target,
            "unannotated_reported": sorted(e["task"] for e in group["unannotated"]) == sorted(unannotated),
            "windows_without_task": group["windows_without_task"], "polygons": group["polygons"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--chip", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--layout", default="tiled", choices=["tiled", "striped"])
    ap.add_argument("--shapes", type=int, default=1500)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="refseg-scene-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size
    nodata_box = (0, int(size * 0.79), int(size * 0.2), size)  # top-right corner
    truth = GroundTruth(size, nodata_box, args.shapes)
    try:
        scene = work / "scene.tif"
        t0 = time.perf_counter()
        write_scene(scene, size, nodata_box, truth, args.layout)
        print(f"scene: {size}x{size}x3 uint16 {args.layout} GeoTIFF, {scene.stat().st_size / 2**20:.0f} MiB, "
              f"written in {time.perf_counter() - t0:.0f} s", flush=True)
        py = [sys.executable, "-m", "cli"]
        tasks_dir = work / "tasks"
        steps = {"tasks": run_measured(py + ["tasks", str(scene), "--chip", str(args.chip), "--overlap",
                                             str(args.overlap), "--expression", EXPRESSION, "--out", str(tasks_dir),
                                             "--image-url-prefix", "http://chips.local/"], work / "tasks.log")}
        tasks_report = json.loads((work / "tasks.log").read_text().strip().splitlines()[-1])
        print(f"tasks: {json.dumps(steps['tasks'])}  {json.dumps(tasks_report['scenes'][0])}", flush=True)
        t0 = time.perf_counter()
        annotated, unannotated = annotate(tasks_dir / "tasks.json", work / "export.json", truth)
        print(f"(harness) {len(annotated)} chips annotated from the ground truth, {len(unannotated)} left "
              f"unannotated, in {time.perf_counter() - t0:.0f} s", flush=True)
        stitched = work / "stitched"
        steps["stitch"] = run_measured(py + ["export", "--data", f"ls-json:{work / 'export.json'}", "--to", "scene",
                                             str(stitched)], work / "stitch.log")
        print(f"stitch: {json.dumps(steps['stitch'])}", flush=True)
        result = check(scene, json.loads((stitched / "report.json").read_text()), truth, annotated, unannotated,
                       size)
        print(f"check: {json.dumps(result)}")
        ok = (result["georeference_identical"] and result["mismatched_pixels_in_covered_area"] == 0
              and result["target_pixels_outside_covered_area"] == 0 and result["unannotated_reported"]
              and result["covered_pixels"] == result["covered_pixels_reported"])
        print("\n| step | wall s | CPU s | peak RSS MB |\n|---|---|---|---|")
        for name, m in steps.items():
            print(f"| {name} | {m['wall_s']} | {m['cpu_s']} | {m['peak_rss_mb']} |")
        print(f"\nround trip {'EXACT' if ok else 'FAILED'}: {result['covered_pixels']:,} covered pixels, "
              f"{result['target_pixels']:,} target pixels, {result['polygons']} polygons")
        return 0 if ok else 1
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
