"""Real pieces for the backend tests: a redis-server on a free loopback port, RQ worker subprocesses
(`python -m workers.worker`), the HTTP app under gunicorn, and a fake Label Studio REST API. The model is the
`tiny` preset, saved once as a checkpoint so that the workers and the test process share its weights.
Everything listens on 127.0.0.1."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from backend_support import free_port, stop_processes, wait_for, wait_for_health
from fake_ls import TOKEN
from service_fixtures import (  # noqa: F401 (fixtures, shared with tests/reliability)
    fake_ls,
    redis_url,
    tiny_checkpoint,
    tmp_root,
)

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="session")
def local_predictor(tiny_checkpoint):
    import torch

    from refseg_model.predictor import RefSegPredictor

    torch.set_num_threads(1)  # the workers run with --threads 1: same arithmetic, identical masks
    return RefSegPredictor.from_spec(tiny_checkpoint)


@pytest.fixture(scope="session")
def base_env(tmp_root, redis_url, tiny_checkpoint, fake_ls):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "BASIC_AUTH", "REFSEG"))}
    env.update({
        "REDIS_URL": redis_url, "REFSEG_MODEL": tiny_checkpoint, "MODEL_DIR": str(tmp_root / "models"),
        "DEVICE": "cpu", "LABEL_STUDIO_URL": fake_ls.url, "LABEL_STUDIO_API_KEY": TOKEN,
        "PREDICT_BUDGET_S": "30", "INTERACTIVE_TIMEOUT_S": "20", "BATCH_CHUNK_SIZE": "2",
        "TRAIN_EVERY_N_ANNOTATIONS": "3", "FINETUNE_STEPS": "2", "FINETUNE_BATCH_SIZE": "2",
        "FINETUNE_PROMOTE_TOLERANCE": "1.0", "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    })
    return env


def _start_worker(env, queues, log_path):
    fh = open(log_path, "w")
    return subprocess.Popen([PY, "-m", "workers.worker", "--queues", queues, "--threads", "1"], cwd=ROOT, env=env,
                            stdout=fh, stderr=subprocess.STDOUT), fh


@pytest.fixture(scope="session")
def workers(base_env, redis_url, tmp_root):
    """One inference worker (interactive,batch) and one trainer (train), like docker/compose.yml."""
    import redis
    from rq import Worker

    procs = [_start_worker(base_env, "interactive,batch", tmp_root / "worker-infer.log"),
             _start_worker(base_env, "train", tmp_root / "worker-train.log")]
    conn = redis.Redis.from_url(redis_url)

    def registered():
        for p, _ in procs:
            if p.poll() is not None:
                raise AssertionError(f"worker exited early; log: {(tmp_root / 'worker-infer.log').read_text()}"
                                     f"{(tmp_root / 'worker-train.log').read_text()}")
        return len(Worker.all(connection=conn)) >= 2

    wait_for(registered, 120, "RQ workers", 0.3)
    yield procs
    stop_processes(procs, 15)


@pytest.fixture(scope="session")
def gunicorn_url(base_env, workers, tmp_root):
    port = free_port()
    fh = open(tmp_root / "gunicorn.log", "w")
    proc = subprocess.Popen([PY, "-m", "gunicorn", "--workers", "1", "--threads", "8", "--timeout", "120",
                             "-b", f"127.0.0.1:{port}", "_wsgi:app"], cwd=ROOT, env=base_env, stdout=fh,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    wait_for_health(url, proc, tmp_root / "gunicorn.log", "gunicorn")
    yield url
    proc.terminate()
    proc.wait(15)
    fh.close()


class ThreadedApp:
    """The real app (create_app) with custom settings, served over HTTP by werkzeug in a thread."""

    def __init__(self, env: dict, **overrides) -> None:
        from werkzeug.serving import make_server

        from backend.app import create_app
        from jobs.settings import Settings

        settings = Settings.from_env({**env, **{k: str(v) for k, v in overrides.items()}})
        self.app = create_app(settings)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def threaded_app(base_env):
    apps = []

    def make(**overrides):
        a = ThreadedApp(base_env, **overrides)
        apps.append(a)
        return a

    yield make
    for a in apps:
        a.close()
