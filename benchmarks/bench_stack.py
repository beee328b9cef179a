"""The real services the backend benchmarks run against: redis-server, RQ workers and gunicorn on 127.0.0.1,
started from one environment and stopped together. Shared by web_stack.py, load.py and active_learning.py.
"""
from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIG = ('<View><Image name="image" value="$image"/><Text name="expr" value="$expression"/>'
          '<BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels></View>')
CONFIG_PROMPT = ('<View><Image name="image" value="$image"/><TextArea name="prompt" toName="image"/>'
                 '<BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels></View>')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(check, timeout: float, what: str, interval: float = 0.2):
    """Poll `check` until it returns something truthy (returned); connection errors count as "not yet"."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = check()
        except (requests.RequestException, OSError, redis.exceptions.ConnectionError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def pct(xs, q) -> float:
    """Percentile `q` of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def image_server(images: dict) -> str:
    """Stands in for Label Studio's /data/upload/ (the workers download task images from it)."""

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            data = images.get(self.path)
            self.send_response(200 if data else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}"


class Stack:
    """Processes started with `env` (which holds REDIS_URL), logs in `tmp`, stopped together by `stop()`."""

    def __init__(self, env: dict, tmp: Path) -> None:
        self.env, self.tmp, self.procs = env, Path(tmp), []

    def start(self, *cmd, log: str) -> subprocess.Popen:
        with open(self.tmp / log, "w") as fh:  # the child keeps its own descriptor
            p = subprocess.Popen(list(cmd), cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def start_redis(self) -> None:
        port = urlsplit(self.env["REDIS_URL"]).port
        self.start(shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.tmp), log="redis.log")

    def start_worker(self, queues: str, threads: int, log: str) -> subprocess.Popen:
        return self.start(sys.executable, "-m", "workers.worker", "--queues", queues, "--threads", str(threads),
                          log=log)

    def start_web(self, threads: int = 8, timeout: int = 120) -> str:
        """gunicorn with the backend app; returns its URL once /health answers."""
        port = free_port()
        self.start(sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", str(threads), "--timeout",
                   str(timeout), "-b", f"127.0.0.1:{port}", "_wsgi:app", log="gunicorn.log")
        url = f"http://127.0.0.1:{port}"
        wait(lambda: requests.get(url + "/health", timeout=1).ok, 120, "gunicorn")
        return url

    def wait_workers(self, n: int, timeout: float = 600) -> None:
        from rq import Worker

        conn = redis.Redis.from_url(self.env["REDIS_URL"])
        wait(lambda: Worker.count(connection=conn) >= n, timeout, f"{n} RQ worker(s)")

    def stop(self) -> None:
        for q in reversed(self.procs):
            q.terminate()
        for q in self.procs:
            try:
                q.wait(20)
            except subprocess.TimeoutExpired:
                q.kill()
        self.procs = []
