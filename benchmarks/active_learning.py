"""Active-learning loop, simulated: annotators correct suggestions, the model is fine-tuned, suggestions improve.

Everything goes through the real backend (gunicorn serving _wsgi:app, redis-server, RQ workers: one for
interactive+batch, one for train). Label Studio is replaced by a small stand-in of the REST endpoints the workers
call (project config, tasks with their annotations, image download, POST /api/predictions); the benchmark itself
sends what Label Studio would send: POST /predict with the remaining tasks ("Retrieve predictions"), POST /webhook
ANNOTATION_CREATED for every correction and START_TRAINING after each round.

Per ordering (confidence: least confident suggestions corrected first; random), per round:
  round 0: base model's suggestions on all tasks;
  round r: the annotator corrects K more tasks (the ground truth becomes their annotation), the project is
           fine-tuned, and the new version's suggestions are scored on the tasks not corrected yet.
Prints corrected masks so far, gIoU / cIoU of the suggestions on the remaining tasks, and the share of suggestions
good enough to accept unchanged (IoU >= 0.9); and gIoU / cIoU on a fixed set of extra tasks that are never
corrected (--eval-tasks): the fair comparison of the orderings, since confidence ordering takes the hard tasks
out of the "remaining" set first. Writes a PNG plot.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/active_learning.py --data DIR [--model demo] [--tasks 60]
      [--per-round 10] [--rounds 3] [--finetune-steps 100] [--plot runs/active_learning.png]
DIR is an interchange-layout data set (`refseg synth DIR --images 40 --size 128`).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import requests
from bench_stack import CONFIG, ROOT, Stack, free_port, wait

TOKEN = "bench-token"
ACCEPT_IOU = 0.9


class LabelStudioStandIn:
    """The REST endpoints the workers use, backed by dicts (127.0.0.1 only)."""

    def __init__(self) -> None:
        self.projects, self.tasks, self.files, self.predictions = {}, {}, {}, []
        self.lock = threading.Lock()
        ls = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self._send(401, {"detail": "no"})
                u = urlsplit(self.path)
                q = parse_qs(u.query)
                parts = u.path.strip("/").split("/")
                if u.path in ls.files:
                    return self._send(200, ls.files[u.path])
                if parts[:2] == ["api", "projects"] and len(parts) == 3:
                    return self._send(200, ls.projects[int(parts[2])])
                if u.path == "/api/tasks":
                    pid, page, size = int(q["project"][0]), int(q.get("page", [1])[0]), int(q.get("page_size", [100])[0])
                    with ls.lock:
                        tasks = [t for t in ls.tasks.values() if t["project"] == pid]
                        chunk = json.loads(json.dumps(tasks[(page - 1) * size: page * size]))
                    if page > 1 and not chunk:
                        return self._send(404, {"detail": "Invalid page."})
                    return self._send(200, {"total": len(tasks), "tasks": chunk})
                if parts[:2] == ["api", "tasks"] and len(parts) == 4:
                    return self._send(200, ls.tasks[int(parts[2])]["annotations"])
                return self._send(404, {"detail": "Not found."})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self._send(401, {"detail": "no"})
                if self.path == "/api/predictions":
                    with ls.lock:
                        ls.predictions.append(body)
                    return self._send(201, body)
                return self._send(404, {"detail": "Not found."})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def decode(result: dict, shape) -> np.ndarray:
    from labelstudio.brush import rle_to_mask

    mask = np.zeros(shape, dtype=bool)
    for r in result.get("result") or []:
        if r.get("type") == "brushlabels":
            mask |= rle_to_mask(r["value"]["rle"], r["original_height"], r["original_width"])
    return mask


def run_ordering(name, project, samples, n_eval, args, ls, url, state, rounds_out):
    """samples[:n_eval] are never corrected (a fixed evaluation set, the same for every ordering); the others
    are the pool the annotator corrects."""
    from formats.metrics import RefSegMetrics
    from jobs.stats import finetune_status
    from labelstudio.brush import brush_region
    from labelstudio.identity import ProjectRef, instance_id

    # created at unix time 1, as "<id>.1" below says; its state lives under this key
    ls.projects[project] = {"id": project, "label_config": CONFIG, "created_at": "1970-01-01T00:00:01Z"}
    key = ProjectRef(str(project), "1", instance_id(ls.url)).key
    base_id = project * 100000
    for i, s in enumerate(samples):
        tid = base_id + i
        path = f"/data/upload/{project}/{i}{Path(s['image_path']).suffix}"
        ls.files[path] = s["image_bytes"]
        ls.tasks[tid] = {"id": tid, "project": project, "data": {"image": path, "expression": s["expression"]},
                         "annotations": [], "total_annotations": 0, "is_labeled": False}
    corrected: list = []
    rng = random.Random(0)
    eval_ids = {base_id + i for i in range(n_eval)}
    for rnd in range(args.rounds + 1):
        remaining = [tid for tid in sorted(ls.tasks) if ls.tasks[tid]["project"] == project and tid not in corrected]
        tasks = [{"id": tid, "project": project, "data": ls.tasks[tid]["data"]} for tid in remaining]
        t0 = time.monotonic()
        r = requests.post(url + "/predict", json={"tasks": tasks, "project": f"{project}.1", "label_config": CONFIG,
                                                  "params": {"login": None, "password": None, "context": None}},
                          timeout=3600)
        r.raise_for_status()
        results = r.json()["results"]
        assert len(results) == len(tasks)
        errors = [x.get("error") for x in results if x.get("error") or x.get("pending")]
        if errors:  # PREDICT_BUDGET_S is large: every task must be answered in the response
            raise SystemExit(f"{len(errors)} task(s) not predicted: {errors[0] or 'pending'}")
        seconds = time.monotonic() - t0
        metrics, fixed = RefSegMetrics(), RefSegMetrics()
        scored = []
        for tid, res in zip(remaining, results):
            s = samples[tid - base_id]
            pred = decode(res, s["mask"].shape)
            if tid in eval_ids:
                fixed.add(pred, s["mask"])
            else:
                scored.append((tid, float(res.get("score", 0.0)), metrics.add(pred, s["mask"])))
        m, f = metrics.compute(), fixed.compute()
        accept = float(np.mean([iou >= ACCEPT_IOU for _, _, iou in scored])) if scored else float("nan")
        version = results[0].get("model_version") if results else "?"
        row = {"ordering": name, "round": rnd, "corrected": len(corrected), "remaining": len(scored),
               "gIoU": m["gIoU"], "cIoU": m["cIoU"], "accept": accept, "fixed_gIoU": f["gIoU"],
               "fixed_cIoU": f["cIoU"], "version": version, "predict_s": round(seconds, 1)}
        rounds_out.append(row)
        print(f"{name:10s} round {rnd}  corrected {len(corrected):4d}  remaining {len(scored):4d}  "
              f"gIoU {m['gIoU']:.4f}  cIoU {m['cIoU']:.4f}  accept@{ACCEPT_IOU} {accept:6.1%}  "
              f"fixed-set gIoU {f['gIoU']:.4f}  [{version}, predict {seconds:.1f} s]", flush=True)
        if rnd == args.rounds:
            break
        # the annotator corrects K more tasks
        if name == "confidence":
            order = [tid for tid, score, _ in sorted(scored, key=lambda x: x[1])]  # least confident first
        else:
            order = [tid for tid, _, _ in scored]
            rng.shuffle(order)
        for tid in order[: args.per_round]:
            s = samples[tid - base_id]
            region = brush_region(s["mask"], from_name="mask", to_name="image", label="target")
            ann = {"id": len(corrected) + 1 + base_id, "result": [region], "was_cancelled": False,
                   "ground_truth": False, "task": tid, "project": project,
                   "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            with ls.lock:
                ls.tasks[tid]["annotations"] = [ann]
                ls.tasks[tid]["total_annotations"] = 1
                ls.tasks[tid]["is_labeled"] = True
            requests.post(url + "/webhook", json={"action": "ANNOTATION_CREATED", "annotation": ann,
                                                  "task": ls.tasks[tid], "project": ls.projects[project]}, timeout=10)
            corrected.append(tid)
        before = finetune_status(state).get(key, {}).get("job")
        t0 = time.monotonic()
        requests.post(url + "/webhook", json={"action": "START_TRAINING", "project": ls.projects[project]},
                      timeout=10).raise_for_status()

        def finished():
            st = finetune_status(state).get(key, {})
            return st if st.get("job") != before and st.get("state") in ("promoted", "rejected", "skipped",
                                                                          "failed") else None

        wait(finished, 6 * 3600, "fine-tune", interval=0.5)
        st = finetune_status(state)[key]
        print(f"{name:10s}   fine-tune {st.get('state')} {st.get('version', '')} in {time.monotonic() - t0:.0f} s "
              f"(held-out gIoU new {st.get('giou_new', float('nan')):.4f} vs {st.get('giou_current', float('nan')):.4f})",
              flush=True)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["ordering"] for r in rows}):
        rs = [r for r in rows if r["ordering"] == name]
        x = [r["corrected"] for r in rs]
        axes[0].plot(x, [r["gIoU"] for r in rs], marker="o", label=f"{name} gIoU")
        axes[0].plot(x, [r["cIoU"] for r in rs], marker="x", linestyle="--", label=f"{name} cIoU")
        axes[0].plot(x, [r["fixed_gIoU"] for r in rs], marker="s", linestyle=":", label=f"{name} gIoU fixed set")
        axes[1].plot(x, [100 * r["accept"] for r in rs], marker="o", label=name)
    axes[0].set(xlabel="corrected masks", ylabel="IoU of suggestions on remaining tasks", title="suggestion quality")
    axes[1].set(xlabel="corrected masks", ylabel=f"% accepted unchanged (IoU >= {ACCEPT_IOU})", title="acceptable")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="interchange-layout data set")
    ap.add_argument("--split", default=None, help="use only this split (default all)")
    ap.add_argument("--model", default="demo", help="REFSEG_MODEL: demo, preset:NAME or a checkpoint directory")
    ap.add_argument("--tasks", type=int, default=60, help="tasks the annotator may correct")
    ap.add_argument("--eval-tasks", type=int, default=30,
                    help="extra tasks never corrected: a fixed set to compare the orderings on")
    ap.add_argument("--per-round", type=int, default=10, help="masks corrected per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--finetune-steps", type=int, default=100)
    ap.add_argument("--finetune-batch-size", type=int, default=4)
    ap.add_argument("--finetune-lr", type=float, default=1e-4)
    ap.add_argument("--promote-tolerance", type=float, default=0.0, help="FINETUNE_PROMOTE_TOLERANCE")
    ap.add_argument("--orderings", default="confidence,random")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default="runs/active_learning.png")
    ap.add_argument("--json", default=None, help="also write the rows as JSON")
    args = ap.parse_args()

    from formats.datasets.layouts import load_samples
    from formats.datasets.sample_mask import load_sample_mask

    pool = load_samples(args.data, args.split)
    random.Random(args.seed).shuffle(pool)
    samples = [{"image_path": str(s.image), "image_bytes": Path(s.image).read_bytes(), "expression": s.expression,
                "mask": load_sample_mask(s)} for s in pool[: args.eval_tasks + args.tasks]]
    n_eval = min(args.eval_tasks, max(0, len(samples) - args.per_round))
    print(f"{len(samples) - n_eval} tasks (+{n_eval} fixed evaluation tasks) from {args.data}; model {args.model}; "
          f"{args.rounds} rounds of {args.per_round} "
          f"corrections; fine-tune {args.finetune_steps} steps", flush=True)

    ls = LabelStudioStandIn()
    tmp = Path(tempfile.mkdtemp(prefix="refseg-al-"))
    redis_port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "REFSEG_MODEL": args.model,
           "MODEL_DIR": str(tmp / "models"), "DEVICE": os.environ.get("DEVICE", "auto"),
           "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": TOKEN, "PREDICT_BUDGET_S": "3000",
           "BATCH_CHUNK_SIZE": "16", "TRAIN_EVERY_N_ANNOTATIONS": "0",
           "FINETUNE_STEPS": str(args.finetune_steps), "FINETUNE_BATCH_SIZE": str(args.finetune_batch_size),
           "FINETUNE_LR": str(args.finetune_lr), "FINETUNE_PROMOTE_TOLERANCE": str(args.promote_tolerance),
           "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    stack = Stack(env, tmp)
    rows: list = []
    try:
        stack.start_redis()
        stack.start_worker("interactive,batch", args.threads, log="worker-infer.log")
        stack.start_worker("train", args.threads, log="worker-train.log")
        url = stack.start_web(threads=8, timeout=0)
        stack.wait_workers(2, 600)
        from jobs.connections import state_connection

        state = state_connection(env["REDIS_URL"])
        for k, name in enumerate(o.strip() for o in args.orderings.split(",") if o.strip()):
            if name not in ("confidence", "random"):
                raise SystemExit(f"unknown ordering {name!r}")
            run_ordering(name, k + 1, samples, n_eval, args, ls, url, state, rows)
    finally:
        stack.stop()
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in tmp.glob("*.log")}
        if not rows or len(rows) < (args.rounds + 1):
            for n, text in logs.items():
                print(f"--- {n}\n{text}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nordering    round  corrected  remaining: gIoU    cIoU    accept  | fixed set: gIoU    cIoU")
    for r in rows:
        print(f"{r['ordering']:10s}  {r['round']:5d}  {r['corrected']:9d}  {'':10s} {r['gIoU']:.4f}  {r['cIoU']:.4f}  "
              f"{r['accept']:6.1%}  | {'':10s} {r['fixed_gIoU']:.4f}  {r['fixed_cIoU']:.4f}")
    by = {}
    for r in rows:
        by.setdefault(r["ordering"], []).append(r)
    for name, rs in by.items():
        print(f"{name}: gIoU round 0 -> {rs[-1]['round']}: {rs[0]['gIoU']:.4f} -> {rs[-1]['gIoU']:.4f} "
              f"({'rising' if rs[-1]['gIoU'] > rs[0]['gIoU'] else 'not rising'})")
    if {"confidence", "random"} <= set(by):
        c, r = by["confidence"][-1], by["random"][-1]
        verdict = "beats" if c["fixed_gIoU"] > r["fixed_gIoU"] else "does not beat"
        print(f"confidence ordering {verdict} random after {c['corrected']} corrections: fixed-set gIoU "
              f"{c['fixed_gIoU']:.4f} vs {r['fixed_gIoU']:.4f} (on the remaining tasks {c['gIoU']:.4f} vs "
              f"{r['gIoU']:.4f}, but those sets differ: confidence ordering removes the hard tasks first)")
    if args.plot:
        plot(rows, Path(args.plot))
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
