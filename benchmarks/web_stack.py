"""Benchmark of the ML backend through its real pieces (redis-server, RQ workers, gunicorn), on 127.0.0.1.

Prints
  1. interactive /predict latency through the queue vs. the predictor called in-process (p50/p95, overhead in
     ms and as a ratio); same image each time (embedding cache warm on both sides), new expression each call;
  2. throughput of a 200-task "Retrieve predictions" batch with 1 and with 2 workers;
  3. /webhook latency (ANNOTATION_CREATED, what Label Studio sends inside the annotator's save with a 1 s timeout):
     idle, and while the 1-worker batch runs;
  4. brush RLE: labelstudio.brush.mask_to_rle vs label-studio-sdk's mask2rle on a 4096x4096 mask (identical output
     and speed ratio).

Run:  PYTHONPATH=. .venv/bin/python benchmarks/backend.py [--model preset:tiny] [--image 512] [--tasks 200]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from bench_stack import CONFIG, CONFIG_PROMPT, ROOT, Stack, free_port, image_server, pct, png


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="preset:tiny", help="REFSEG_MODEL for workers and the in-process baseline")
    ap.add_argument("--image", type=int, default=256, help="square image side in pixels")
    ap.add_argument("--interactive", type=int, default=40, help="interactive requests")
    ap.add_argument("--tasks", type=int, default=200, help="tasks in the batch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker and in-process")
    ap.add_argument("--rle-size", type=int, default=4096)
    ap.add_argument("--only", choices=("stack", "rle"), help="run one part only")
    args = ap.parse_args()
    if args.only != "rle":
        bench_stack(args)
    if args.only != "stack":
        report_rle(args.rle_size)


def bench_stack(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="refseg-bench-"))
    rng = np.random.default_rng(0)
    images = {f"/data/upload/1/{i}.png": png(rng.integers(0, 255, (args.image, args.image, 3), dtype=np.uint8))
              for i in range(args.tasks)}
    ls_url = image_server(images)
    redis_port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "REFSEG_MODEL": args.model,
           "MODEL_DIR": str(tmp / "models"), "DEVICE": "cpu", "LABEL_STUDIO_URL": ls_url,
           "LABEL_STUDIO_API_KEY": "bench", "PREDICT_BUDGET_S": "170", "BATCH_CHUNK_SIZE": "8",
           "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    stack = Stack(env, tmp)
    try:
        stack.start_redis()
        stack.start_worker("interactive,batch", args.threads, log="worker1.log")
        url = stack.start_web(threads=8, timeout=200)
        stack.wait_workers(1, 300)

        import torch

        from formats.images import load_image
        from refseg_model.predictor import RefSegPredictor

        torch.set_num_threads(args.threads)
        predictor = RefSegPredictor.from_spec(args.model)
        first = next(iter(images))
        img = load_image(images[first])

        # 1. interactive latency
        def interactive(i):
            task = {"id": 1, "data": {"image": first}}
            ctx = {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                               "value": {"text": [f"the building number {i}"]}}]}
            r = requests.post(url + "/predict", json={"tasks": [task], "project": "1.1", "label_config": CONFIG_PROMPT,
                                                      "params": {"context": ctx}}, timeout=60)
            r.raise_for_status()
            assert "error" not in r.json()["results"][0], r.json()["results"][0].get("error")

        for i in range(3):  # warm-up (model load, embedding cache)
            interactive(-i)
            predictor.predict(img, [f"warm {i}"])
        queued, direct = [], []
        for i in range(args.interactive):
            t = time.perf_counter()
            interactive(i)
            queued.append(time.perf_counter() - t)
            t = time.perf_counter()
            predictor.predict(img, [f"the building number {i}"])
            direct.append(time.perf_counter() - t)
        print(f"model {args.model}, {args.image}x{args.image} images, torch threads {args.threads}")
        print(f"interactive /predict via queue  p50 {pct(queued, 50):8.1f} ms  p95 {pct(queued, 95):8.1f} ms")
        print(f"predictor in-process            p50 {pct(direct, 50):8.1f} ms  p95 {pct(direct, 95):8.1f} ms")
        print(f"overhead                        p50 {pct(queued, 50) - pct(direct, 50):8.1f} ms  "
              f"ratio {pct(queued, 50) / max(pct(direct, 50), 1e-6):.1f}x  "
              "(HTTP + Redis/RQ + image download + decode + RLE encode)")

        # 2. batch throughput
        tasks = [{"id": 1000 + i, "data": {"image": p, "expression": f"object {i}"}} for i, p in enumerate(images)]

        def batch(n_workers):
            t = time.perf_counter()
            r = requests.post(url + "/predict", json={"tasks": tasks, "project": f"{n_workers + 10}.1",
                                                      "label_config": CONFIG, "params": {"context": None}}, timeout=200)
            dt = time.perf_counter() - t
            res = r.json()["results"]
            ok = sum("result" in x and "error" not in x for x in res)
            print(f"batch of {len(tasks)} tasks, {n_workers} worker(s): {dt:6.2f} s  {len(tasks) / dt:6.1f} tasks/s "
                  f"({ok} predicted, {len(res)} results)")

        def webhooks(n, project):
            times = []
            for i in range(n):
                event = {"action": "ANNOTATION_CREATED",  # the project object carries created_at, as LS sends it
                         "project": {"id": project, "created_at": "2024-04-05T19:34:38.000000Z"},
                         "annotation": {"id": i, "task": 1, "project": project, "result": [], "was_cancelled": False},
                         "task": {"id": 1, "data": {}}}
                t = time.perf_counter()
                requests.post(url + "/webhook", json=event, timeout=5).raise_for_status()
                times.append(time.perf_counter() - t)
            return times

        def report_webhooks(label, times):
            print(f"/webhook {label:<22} p50 {pct(times, 50):6.1f} ms  p95 {pct(times, 95):6.1f} ms  "
                  f"max {max(times) * 1e3:6.1f} ms  ({len(times)} events; Label Studio gives up at 1000 ms)")

        report_webhooks("idle", webhooks(200, 900))
        busy: list = []
        runner = threading.Thread(target=lambda: busy.extend(webhooks(200, 901)))
        runner.start()  # 200 events while the batch below keeps the worker busy
        batch(1)
        runner.join()
        report_webhooks("during the batch", busy)
        stack.start_worker("interactive,batch", args.threads, log="worker2.log")
        stack.wait_workers(2, 300)
        time.sleep(1.0)
        batch(2)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report_rle(size: int) -> None:
    """The RLE codec benchmark of benchmarks/rle_codec.py, summarised."""
    from rle_codec import bench_rle

    r = bench_rle(size, repeats=5, sdk_repeats=2)
    print(f"brush RLE {size}x{size}: ours {r['ours_encode_s'] * 1e3:.0f} ms (best of 5), SDK mask2rle "
          f"{r['sdk_encode_s'] * 1e3:.0f} ms (best of 2): {r['speedup']:.1f}x faster, identical output: "
          f"{r['identical']}")

if __name__ == "__main__":
    main()
