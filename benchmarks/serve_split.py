"""Interactive /predict latency under the README's run command, idle and while a fine-tune runs, side by side.

Runs `scripts/serve.sh` itself (the default deployment: an inference worker on interactive,batch with
`--threads infer`, a trainer on train with `--threads train --nice 10`, gunicorn) against its own redis-server and
a Label Studio stand-in holding one project with annotated tasks. Then:
  1. idle: N interactive requests (a text prompt on a task image, the image changing every request so that the
     image encoder runs each time, as when an annotator moves to the next task);
  2. "Start training" (START_TRAINING webhook), and N more interactive requests while the fine-tune runs; only
     requests that began and ended while the project's `train:running` marker was set count as "during".
Prints p50 / p95 / max per phase, the ratio of the p50s, and failed requests (HTTP errors, or an `error` field).
`--layout single` measures the old deployment instead (one worker on all three queues, torch's default threads),
`--layout both` runs the two one after the other.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/serve_split.py [--model demo] [--requests 30] [--finetune-steps 200]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import requests
from active_learning import TOKEN, LabelStudioStandIn
from bench_stack import ROOT, Stack, free_port, pct, png, wait

CONFIG_BOTH = ('<View><Image name="image" value="$image"/><Text name="expr" value="$expression"/>'
               '<TextArea name="prompt" toName="image"/>'
               '<BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels></View>')
PROJECT, STAMP = 1, 1712345678
CREATED_AT = "2024-04-05T19:34:38.000000Z"  # STAMP as Label Studio's created_at


def scene(rng, size: int):
    img = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    y, x = rng.integers(size // 8, size // 2, 2)
    mask[y:y + size // 3, x:x + size // 3] = True
    img[mask] = (235, 235, 235)
    return img, mask


def populate(ls: LabelStudioStandIn, n_annotated: int, n_prompt: int, size: int) -> list:
    """A project with `n_annotated` annotated tasks (what the fine-tune pulls) and `n_prompt` image paths for the
    interactive requests."""
    from labelstudio.brush import brush_region

    rng = np.random.default_rng(0)
    ls.projects[PROJECT] = {"id": PROJECT, "label_config": CONFIG_BOTH, "created_at": CREATED_AT}
    for i in range(n_annotated):
        tid = 1000 + i
        img, mask = scene(rng, size)
        path = f"/data/upload/{PROJECT}/a{i}.png"
        ls.files[path] = png(img)
        region = brush_region(mask, from_name="mask", to_name="image", label="target")
        ls.tasks[tid] = {"id": tid, "project": PROJECT, "is_labeled": True, "total_annotations": 1,
                         "data": {"image": path, "expression": "the white block"},
                         "annotations": [{"id": tid, "task": tid, "project": PROJECT, "result": [region],
                                          "was_cancelled": False, "ground_truth": False,
                                          "updated_at": "2026-01-01T00:00:00Z"}]}
    paths = []
    for i in range(n_prompt):
        path = f"/data/upload/{PROJECT}/p{i}.png"
        ls.files[path] = png(scene(rng, size)[0])
        paths.append(path)
    return paths


def interactive(url: str, path: str, i: int) -> tuple:
    """One interactive request; (seconds, failure or '')."""
    task = {"id": 5000 + i, "data": {"image": path}}
    ctx = {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                       "value": {"text": [f"the white block number {i}"]}}]}
    body = {"tasks": [task], "project": f"{PROJECT}.{STAMP}", "label_config": CONFIG_BOTH,
            "params": {"login": None, "password": None, "context": ctx}}
    t = time.perf_counter()
    try:
        r = requests.post(url + "/predict", json=body, timeout=60)
        dt = time.perf_counter() - t
        if r.status_code != 200:
            return dt, f"HTTP {r.status_code}"
        res = r.json()["results"][0]
        return dt, res.get("error") or ("" if "result" in res else "no result")
    except requests.RequestException as exc:
        return time.perf_counter() - t, f"{type(exc).__name__}"


def start_serve(env: dict, tmp: Path) -> subprocess.Popen:
    """scripts/serve.sh in its own process group (stopped as a whole at the end)."""
    log = open(tmp / "serve.log", "w")
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "serve.sh")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.kill(proc.pid, signal.SIGTERM)  # serve.sh stops what it started (SIGKILL after 10 s)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_layout(layout: str, args) -> dict:
    from labelstudio.identity import ProjectRef, instance_id

    tmp = Path(tempfile.mkdtemp(prefix=f"refseg-split-{layout}-"))
    ls = LabelStudioStandIn()
    paths = populate(ls, args.annotated, args.requests * 2 + 4, args.image)
    redis_port, port = free_port(), free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "REFSEG_MODEL": args.model,
           "MODEL_DIR": str(tmp / "models"), "DEVICE": os.environ.get("DEVICE", "cpu"), "LABEL_STUDIO_URL": ls.url,
           "LABEL_STUDIO_API_KEY": TOKEN, "TRAIN_EVERY_N_ANNOTATIONS": "0", "FINETUNE_STEPS": str(args.finetune_steps),
           "FINETUNE_BATCH_SIZE": str(args.finetune_batch_size), "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
           "PORT": str(port), "REFSEG_PY": sys.executable}
    stack = Stack(env, tmp)
    serve = None
    state = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    key = ProjectRef(str(PROJECT), str(STAMP), instance_id(ls.url)).key
    try:
        stack.start_redis()
        wait(lambda: state.ping(), 30, "redis-server")
        if layout == "split":
            serve = start_serve(env, tmp)  # the README's run command
            url = f"http://127.0.0.1:{port}"
            wait(lambda: requests.get(url + "/health", timeout=1).ok, 300, "serve.sh's backend")
        else:  # the deployment before: one worker on every queue
            stack.start(sys.executable, "-m", "workers.worker", "--queues", "interactive,batch,train", log="worker.log")
            url = stack.start_web(threads=16, timeout=120)
        stack.wait_workers(2 if layout == "split" else 1, 600)
        for i in range(4):  # warm-up: model load, first requests
            interactive(url, paths[-1 - i], 10_000 + i)

        idle, failures = [], []
        for i in range(args.requests):
            dt, err = interactive(url, paths[i], i)
            idle.append(dt)
            if err:
                failures.append(("idle", err))
            time.sleep(args.gap)
        r = requests.post(url + "/webhook", json={"action": "START_TRAINING",
                                                  "project": {"id": PROJECT, "created_at": CREATED_AT}}, timeout=10)
        r.raise_for_status()
        wait(lambda: state.get(f"refseg:project:{key}:train:running"), 300, "the fine-tune to start", 0.1)
        time.sleep(args.settle)  # past the fine-tune's start-up (data pull, model load) into the training steps
        during, outside = [], 0
        for i in range(args.requests, 2 * args.requests):
            running_before = state.get(f"refseg:project:{key}:train:running")
            dt, err = interactive(url, paths[i], i)
            if running_before and state.get(f"refseg:project:{key}:train:running"):
                during.append(dt)
                if err:
                    failures.append(("during", err))
            else:
                outside += 1
                if err:
                    failures.append(("after", err))
            time.sleep(args.gap)
        ft = state.hgetall(f"refseg:stats:finetune:{key}")  # still running: stopped with the stack below
        result = {"layout": layout, "idle": idle, "during": during, "outside": outside, "failures": failures,
                  "finetune": {k: v for k, v in ft.items() if k in ("state", "samples", "version")}}
        report(result)
        return result
    finally:
        if serve is not None:
            stop_group(serve)
        stack.stop()
        if args.keep:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(r: dict) -> None:
    name = {"split": "serve.sh (inference worker + trainer)", "single": "one worker on all queues (before)"}
    idle, during = r["idle"], r["during"]
    print(f"\n{name[r['layout']]}  [fine-tune: {r['finetune']}]")
    print(f"  interactive /predict idle          n={len(idle):3d}  p50 {pct(idle, 50):8.1f} ms  "
          f"p95 {pct(idle, 95):8.1f} ms  max {max(idle) * 1e3:8.1f} ms")
    if during:
        print(f"  interactive /predict during train  n={len(during):3d}  p50 {pct(during, 50):8.1f} ms  "
              f"p95 {pct(during, 95):8.1f} ms  max {max(during) * 1e3:8.1f} ms")
        print(f"  p50 during / idle: {pct(during, 50) / pct(idle, 50):.2f}x")
    else:
        print("  no request fell entirely within the fine-tune: raise --finetune-steps")
    if r["outside"]:
        print(f"  ({r['outside']} request(s) of the second phase overlapped the fine-tune's end: not counted)")
    print(f"  failed requests: {len(r['failures'])}" + (f"  e.g. {r['failures'][0]}" if r["failures"] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="demo", help="REFSEG_MODEL (default: the shipped demo model)")
    ap.add_argument("--requests", type=int, default=30, help="interactive requests per phase")
    ap.add_argument("--image", type=int, default=256, help="task image side in pixels")
    ap.add_argument("--annotated", type=int, default=12, help="annotated tasks the fine-tune trains on")
    ap.add_argument("--finetune-steps", type=int, default=200, help="FINETUNE_STEPS (default: the shipped default)")
    ap.add_argument("--finetune-batch-size", type=int, default=4)
    ap.add_argument("--gap", type=float, default=0.5, help="seconds between requests (an annotator's pace)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the fine-tune starts before measuring")
    ap.add_argument("--layout", choices=("split", "single", "both"), default="split")
    ap.add_argument("--keep", action="store_true", help="keep the logs")
    args = ap.parse_args()
    print(f"model {args.model}, {args.image}x{args.image} images, {len(os.sched_getaffinity(0))} CPUs, "
          f"fine-tune {args.finetune_steps} steps x {args.finetune_batch_size}", flush=True)
    for layout in (("split", "single") if args.layout == "both" else (args.layout,)):
        run_layout(layout, args)


if __name__ == "__main__":
    main()
