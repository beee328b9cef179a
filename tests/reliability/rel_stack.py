"""A whole backend deployment for the reliability tests, every piece restartable on its own:
redis-server (AOF on, as shipped), RQ worker subprocesses, gunicorn. Everything listens on 127.0.0.1 only.

Helpers shared with tests/backend (fake Label Studio, images, wait_for) are imported from there, not copied."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
BACKEND_TESTS = ROOT / "tests" / "backend"
if str(BACKEND_TESTS) not in sys.path:  # tests/backend is not a package: its helpers are top-level modules
    sys.path.insert(0, str(BACKEND_TESTS))

from backend_support import free_port, start_redis, wait_for, wait_for_health  # noqa: E402
from fake_ls import TOKEN  # noqa: E402

PY = sys.executable
AUTH = ("ls-user", "basic-pass-Zq8!x")  # basic auth of every stack; must never appear in a log


class Stack:
    def __init__(self, root: Path, tiny_checkpoint: str, ls_url: str, **env_overrides) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis_dir = self.root / "redis"
        self.redis_dir.mkdir(exist_ok=True)
        self.model_dir = self.root / "models"
        (self.root / "files").mkdir(exist_ok=True)
        self.redis_proc = None
        self.workers = {}  # name -> (Popen, file handle, log path)
        self.killed = set()  # workers a test killed on purpose
        self.web = None
        self.url = None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "BASIC_AUTH", "REFSEG",
                                                                        "MEDIA_", "LOCAL_FILES"))}
        env.update({
            "REDIS_URL": self.redis_url, "REFSEG_MODEL": tiny_checkpoint, "MODEL_DIR": str(self.model_dir),
            "DEVICE": "cpu", "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN,
            "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
            "PREDICT_BUDGET_S": "20", "INTERACTIVE_TIMEOUT_S": "10", "BATCH_CHUNK_SIZE": "4",
            "MEDIA_TIMEOUT_S": "2", "MEDIA_ALLOWED_HOSTS": "*,127.0.0.1",
            "TRAIN_EVERY_N_ANNOTATIONS": "0", "FINETUNE_STEPS": "2", "FINETUNE_BATCH_SIZE": "2",
            "FINETUNE_PROMOTE_TOLERANCE": "1.0", "LOG_LEVEL": "DEBUG", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1", "LOCAL_FILES_DOCUMENT_ROOT": str(self.root / "files"),
        })
        env.update({k: str(v) for k, v in env_overrides.items()})
        self.env = env
        self.session = requests.Session()
        self.session.auth = AUTH

    # ------------------------------------------------------------------------------------------------ redis
    def start_redis(self) -> None:
        self.redis_proc, _ = start_redis(self.redis_dir, port=self.redis_port, appendonly=True)

    def redis_up(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.redis_url, socket_connect_timeout=1).ping()
        except redis.exceptions.ConnectionError:
            return False

    def stop_redis(self) -> None:
        self.redis_proc.terminate()
        self.redis_proc.wait(15)

    def state(self):
        import redis

        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def rq(self):
        """A connection as RQ wants it (bytes)."""
        import redis

        return redis.Redis.from_url(self.redis_url)

    # ---------------------------------------------------------------------------------------------- workers
    def start_worker(self, name: str, queues: str) -> subprocess.Popen:
        log_path = self.root / f"worker-{name}.log"
        fh = open(log_path, "a")
        proc = subprocess.Popen([PY, "-m", "workers.worker", "--queues", queues, "--threads", "1",
                                 "--name", f"rel-{name}-{self.redis_port}"], cwd=ROOT, env=self.env,
                                stdout=fh, stderr=subprocess.STDOUT)
        self.workers[name] = (proc, fh, log_path)
        return proc

    def wait_workers(self, names, timeout: float = 120) -> None:
        import redis
        from rq import Worker

        conn = redis.Redis.from_url(self.redis_url)

        def registered():
            for n in names:
                proc, _, log_path = self.workers[n]
                if proc.poll() is not None:
                    raise AssertionError(f"worker {n} exited early: {log_path.read_text()[-3000:]}")
            alive = {w.name for w in Worker.all(connection=conn)}
            return all(f"rel-{n}-{self.redis_port}" in alive for n in names)

        wait_for(registered, timeout, f"workers {names}", 0.3)

    def stop_worker(self, name: str) -> None:
        """SIGTERM: RQ's warm shutdown (the current job, if any, finishes first)."""
        proc, fh, _ = self.workers[name]
        proc.terminate()
        proc.wait(60)
        fh.close()

    def kill_worker(self, name: str) -> None:
        proc, fh, _ = self.workers[name]
        proc.send_signal(signal.SIGKILL)
        self.killed.add(name)
        proc.wait(10)
        fh.close()

    # ------------------------------------------------------------------------------------------------- web
    def start_web(self) -> None:
        port = free_port()
        self.web_log_path = self.root / "gunicorn.log"
        self.web_log = open(self.web_log_path, "a")
        self.web = subprocess.Popen([PY, "-m", "gunicorn", "--workers", "1", "--threads", "8", "--timeout", "120",
                                     "--log-level", "debug", "-b", f"127.0.0.1:{port}", "_wsgi:app"], cwd=ROOT,
                                    env=self.env, stdout=self.web_log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"

        wait_for_health(self.url, self.web, self.web_log_path, "gunicorn")

    def post(self, path: str, timeout: float = 60, **kw) -> requests.Response:
        return self.session.post(self.url + path, timeout=timeout, **kw)

    def logs(self) -> str:
        for _, fh, _ in self.workers.values():
            if not fh.closed:
                fh.flush()
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))

    def start(self, workers=(("infer", "interactive,batch"), ("train", "train"))) -> "Stack":
        self.start_redis()
        for name, queues in workers:
            self.start_worker(name, queues)
        self.start_web()  # gunicorn starts while the workers load torch
        self.wait_workers([n for n, _ in workers])
        return self

    def close(self) -> None:
        procs = [p for p, _, _ in self.workers.values() if p.poll() is None]
        if self.web is not None:
            procs.append(self.web)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for _, fh, _ in self.workers.values():
            fh.close()
        if self.web is not None:
            self.web_log.close()
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.stop_redis()


class BlackHole:
    """A TCP listener that accepts connections and never answers (or, on 127.0.0.2, records that anyone came)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.connections = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            self.connections.append(conn)  # held open, never answered

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for c in self.connections:
            c.close()
        self.sock.close()
