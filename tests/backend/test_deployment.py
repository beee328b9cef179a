"""The README's run command (scripts/serve.sh) runs serving and training apart: an inference worker on
interactive,batch and a trainer on train, with the CPUs split between them and the trainer niced, so that a
fine-tune never holds interactive requests (benchmarks/serve_split.py measures it)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis
import requests
from backend_support import free_port, start_redis, stop_processes, wait_for
from rq import Worker

ROOT = Path(__file__).resolve().parents[2]


def test_serve_sh_runs_an_inference_worker_and_a_separate_trainer(tmp_path):
    from workers.worker import cpu_threads

    (tmp_path / "redis").mkdir()
    redis_proc, redis_url = start_redis(tmp_path / "redis")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "REFSEG", "DEVICE"))},
           "REDIS_URL": redis_url, "PORT": str(port), "MODEL_DIR": str(tmp_path / "models"), "DEVICE": "cpu",
           "REFSEG_PY": sys.executable, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "INFO"}
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen(["bash", "scripts/serve.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    conn = redis.Redis.from_url(redis_url)
    try:
        def two_workers():
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            workers = Worker.all(connection=conn)
            return workers if len(workers) == 2 else None

        workers = wait_for(two_workers, 180, "serve.sh's two workers", 0.5)
        by_queues = {tuple(w.queue_names()): w for w in workers}
        assert set(by_queues) == {("interactive", "batch"), ("train",)}
        infer, trainer = by_queues[("interactive", "batch")], by_queues[("train",)]
        assert os.getpriority(os.PRIO_PROCESS, trainer.pid) - os.getpriority(os.PRIO_PROCESS, infer.pid) == 10
        def up():
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(up, 60, "serve.sh's backend", 0.3)
        text = (tmp_path / "serve.log").read_text()
        assert f"torch threads {cpu_threads('infer')}, nice 0" in text, text[-3000:]
        assert f"torch threads {cpu_threads('train')}, nice 10" in text, text[-3000:]
    finally:
        os.killpg(serve.pid, signal.SIGTERM)  # serve.sh stops what it started
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()
        stop_processes([(redis_proc, None)])
