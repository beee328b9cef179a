"""Load test of the ML backend: N concurrent clients on /predict (interactive and batch mixed) against real
gunicorn + RQ workers + redis-server on 127.0.0.1, bounded in request count and time.

Prints throughput, p50/p95/p99 latency per kind, HTTP errors, and checks that every request got exactly one
well-formed answer: HTTP 200, one result per task in order, each with a model_version and either a brush region
whose RLE decodes (label-studio-sdk) to the image's size, or an explicit error / pending marker.

Run:  .venv/bin/python benchmarks/load.py [--clients 8] [--seconds 30] [--max-requests 400] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import bench_stack as bench
import numpy as np
import requests


def well_formed(body, n_tasks: int, size: int) -> str:
    """'' if the /predict answer is well formed, else what is wrong."""
    from label_studio_sdk.converter.brush import decode_rle

    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != n_tasks:
        return f"expected {n_tasks} results, got {None if results is None else len(results)}"
    for r in results:
        if not isinstance(r, dict) or not r.get("model_version"):
            return "a result without model_version"
        if r.get("error") or r.get("pending"):
            continue
        regions = r.get("result")
        if not isinstance(regions, list):
            return "a result without 'result'"
        for reg in regions:
            v = reg.get("value") or {}
            h, w = reg.get("original_height"), reg.get("original_width")
            if (h, w) != (size, size):
                return f"region of size {h}x{w}, image is {size}x{size}"
            if decode_rle(v["rle"]).size != h * w * 4:
                return "RLE does not decode to the image size"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="preset:tiny")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0, help="stop sending after this long")
    ap.add_argument("--max-requests", type=int, default=400, help="stop after this many requests in all")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-share", type=float, default=0.3, help="share of batch requests (4 tasks each)")
    ap.add_argument("--image", type=int, default=128)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="refseg-load-"))
    rng = np.random.default_rng(0)
    images = {f"/data/upload/1/{i}.png": bench.png(rng.integers(0, 255, (args.image, args.image, 3), dtype=np.uint8))
              for i in range(64)}
    ls_url = bench.image_server(images)
    redis_port = bench.free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "REFSEG_MODEL": args.model,
           "MODEL_DIR": str(tmp / "models"), "DEVICE": "cpu", "LABEL_STUDIO_URL": ls_url,
           "LABEL_STUDIO_API_KEY": "load", "PREDICT_BUDGET_S": "30", "INTERACTIVE_TIMEOUT_S": "20",
           "BATCH_CHUNK_SIZE": "4", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(bench.ROOT), "OMP_NUM_THREADS": "1"}
    stack = bench.Stack(env, tmp)
    try:
        stack.start_redis()
        for k in range(args.workers):
            stack.start_worker("interactive,batch", 1, log=f"worker{k}.log")
        url = stack.start_web(threads=max(8, 2 * args.clients), timeout=120)
        stack.wait_workers(args.workers, 300)
        paths = list(images)
        # warm-up: the first job of each worker pays for imports
        requests.post(url + "/predict", json={"tasks": [{"id": 1, "data": {"image": paths[0], "expression": "x"}}],
                                              "project": "1.1", "label_config": bench.CONFIG}, timeout=120)

        lock = threading.Lock()
        sent = [0]
        stop_at = time.monotonic() + args.seconds
        lat = defaultdict(list)
        problems = defaultdict(int)

        def client(cid: int) -> None:
            r = random.Random(cid)
            session = requests.Session()
            while True:
                with lock:
                    if sent[0] >= args.max_requests or time.monotonic() >= stop_at:
                        return
                    sent[0] += 1
                    n = sent[0]
                if r.random() < args.batch_share:
                    kind, tasks = "batch", [{"id": 10_000 * cid + n * 10 + j,
                                             "data": {"image": r.choice(paths), "expression": f"object {j}"}}
                                            for j in range(4)]
                    body = {"tasks": tasks, "project": "2.1", "label_config": bench.CONFIG}
                else:
                    kind, tasks = "interactive", [{"id": 1 + r.randrange(64), "data": {"image": r.choice(paths)}}]
                    ctx = {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                                       "value": {"text": [f"the building number {n}"]}}]}
                    body = {"tasks": tasks, "project": "3.1", "label_config": bench.CONFIG_PROMPT,
                            "params": {"context": ctx}}
                t = time.perf_counter()
                try:
                    resp = session.post(url + "/predict", json=body, timeout=120)
                    dt = time.perf_counter() - t
                    why = f"HTTP {resp.status_code}" if resp.status_code != 200 else well_formed(
                        resp.json(), len(tasks), args.image)
                except requests.RequestException as exc:
                    dt, why = time.perf_counter() - t, type(exc).__name__
                with lock:
                    lat[kind].append(dt)
                    if why:
                        problems[f"{kind}: {why}"] += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0

        total = sum(len(v) for v in lat.values())
        print(f"model {args.model}, {args.image}px images, {args.workers} worker(s), {args.clients} clients, "
              f"{total} requests in {wall:.1f} s: {total / wall:.1f} req/s")
        print(f"{'kind':12s} {'n':>5s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
        for kind, xs in sorted(lat.items()):
            print(f"{kind:12s} {len(xs):5d} {bench.pct(xs, 50):8.0f} {bench.pct(xs, 95):8.0f} "
                  f"{bench.pct(xs, 99):8.0f} {max(xs) * 1000:8.0f}")
        bad = sum(problems.values())
        print(f"every request answered once and well formed: {'yes' if bad == 0 else 'NO'} "
              f"({total - bad}/{total} ok)")
        for what, n in sorted(problems.items()):
            print(f"  {n:5d}  {what}")
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
