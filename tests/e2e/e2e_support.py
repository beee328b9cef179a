"""Constants and helpers shared by tests/e2e (a uniquely named module: `conftest` is taken by tests/backend).

Process management lives here rather than in conftest.py so that a test can start and stop whole stacks itself
(tests/e2e/test_restart_e2e.py runs Label Studio, Redis and the backend twice):

    LabelStudioServer   a real Label Studio on 127.0.0.1 with a throwaway data dir (copied from a migrated template)
    LabelStudio         its REST API, with the fixed legacy token or a Personal Access Token (refreshed as needed)
    Backend             what scripts/serve.sh runs: RQ workers + gunicorn, stopped (or SIGKILLed) by PID
    ImageServer         a plain HTTP image server whose answers for chosen files can be held back
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import unquote, urlsplit

import requests

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
LS_VERSION = "1.23.2"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the LS admin's fixed legacy API token
ADMIN = ("admin@example.com", "pass12345")  # the LS admin's e-mail and password (the editor's login page)
ML_TIMEOUT_PREDICT = 8  # LS's read timeout for /predict, the interactive call and START_TRAINING (s)
PREDICT_BUDGET_S = 0.5  # the backend answers /predict within this; the rest is POSTed to LS later
INTERACTIVE_TIMEOUT_S = 6
E2E_HELP = "end-to-end test against a real Label Studio: run `bash scripts/e2e.sh` (or `pytest -m e2e tests/e2e`)"


# the backend tests' helpers (tests/backend is not a package: its modules are imported top-level)
sys.path.insert(0, str(ROOT / "tests" / "backend"))
from backend_support import (  # noqa: E402,F401
    free_port,
    running_redis,
    save_sharpened_tiny,
    start_redis,
    stop_processes,
    wait_for,
    wait_for_health,
)


def tail(path: Path, n: int = 4000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------- Label Studio API
class LabelStudio:
    """Label Studio's REST API as the test drives it. `token` is the legacy token (`Authorization: Token`), or
    with `pat=True` a Personal Access Token: a JWT refresh token exchanged at /api/token/refresh/ for 5-minute
    access tokens (`Authorization: Bearer`), renewed on a 401."""

    def __init__(self, url: str, token: str, log: Path, pat: bool = False) -> None:
        self.url, self.log, self.token, self.pat = url, log, token, pat
        self.session = requests.Session()
        if pat:
            self._refresh()
        else:
            self.session.headers["Authorization"] = f"Token {token}"

    def _refresh(self) -> None:
        r = requests.post(self.url + "/api/token/refresh/", json={"refresh": self.token}, timeout=30)
        assert r.status_code == 200, f"PAT refresh: HTTP {r.status_code} {r.text[:300]}"
        self.session.headers["Authorization"] = f"Bearer {r.json()['access']}"

    def with_pat(self, pat: str) -> "LabelStudio":
        return LabelStudio(self.url, pat, self.log, pat=True)

    def api(self, method: str, path: str, expect=(200, 201, 204), timeout: float = 120, **kw):
        r = self.session.request(method, self.url + path, timeout=timeout, **kw)
        if r.status_code == 401 and self.pat:  # the access token expired
            self._refresh()
            r = self.session.request(method, self.url + path, timeout=timeout, **kw)
        if r.status_code not in expect:
            raise AssertionError(f"{method} {path}: HTTP {r.status_code} {r.text[:500]}\nLS log:\n{tail(self.log, 3000)}")
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else r

    def get(self, path, **kw):
        return self.api("GET", path, **kw)

    def post(self, path, **kw):
        return self.api("POST", path, **kw)


# ---------------------------------------------------------------------------------------- Label Studio server
def ls_env(data: Path, docroot: Path, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "DJANGO", "ML_"))}
    env.update({
        "LATEST_VERSION_CHECK": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "USE_DEFAULT_BANNED_SUBNETS": "false",  # else LS refuses a backend on 127.0.0.1 (and its webhook)
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docroot),
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "ML_TIMEOUT_PREDICT": str(ML_TIMEOUT_PREDICT),
        "HOME": str(home), "PYTHONUNBUFFERED": "1",
    })
    return env


def _start_ls(venv: Path, data: Path, env: dict, port: int, log: Path):
    """Start LS and wait for /health; returns the process (and the seconds it took)."""
    url = f"http://127.0.0.1:{port}"
    fh = log.open("a")
    proc = subprocess.Popen(
        [str(venv / "bin" / "label-studio"), "start", "--data-dir", str(data), "--internal-host", "127.0.0.1",
         "--host", url, "-p", str(port), "--username", ADMIN[0], "--password", ADMIN[1],
         "--user-token", TOKEN, "--enable-legacy-api-token", "--no-browser"],
        env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=data.parent)
    fh.close()

    t0 = time.monotonic()
    try:
        # a first start migrates a fresh SQLite database: ~20 s on an idle 2-core machine, minutes on a busy one
        wait_for_health(url, proc, log, "label-studio", float(os.environ.get("REFSEG_E2E_LS_START_S", "900")), 0.5,
                        request_timeout=2)
    except BaseException:
        stop_processes([(proc, None)])
        raise
    return proc, time.monotonic() - t0


@contextlib.contextmanager
def label_studio_server(venv: Path, root: Path, docroot: Path, name: str = "ls", port: Optional[int] = None):
    """A running LS on the fresh data dir `root/<name>-data`, yielding a LabelStudio client (legacy token).

    The data dir starts as a copy of a template made by the first run (a migrated database with the admin user,
    its org and the fixed legacy token, no project; `.e2e/ls-template-*` next to the venv), which cuts the start
    from the full migration to a restart. Every copy is a fresh Label Studio: its first project gets id 1."""
    data = root / f"{name}-data"
    template = venv.parent / f"ls-template-{LS_VERSION}"
    env = ls_env(data, docroot, root / f"{name}-home")
    log = root / f"{name}.log"
    if not (template / ".complete").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        proc, seconds = _start_ls(venv, data, env, free_port(), log)
        print(f"\n[e2e] Label Studio {LS_VERSION}: first start (migrations) in {seconds:.1f} s")
        stop_processes([(proc, None)])
        shutil.rmtree(template, ignore_errors=True)
        shutil.copytree(data, template)
        (template / ".complete").write_text(LS_VERSION)
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(template, data, ignore=shutil.ignore_patterns(".complete"))
    port = port or free_port()
    proc, seconds = _start_ls(venv, data, env, port, log)
    print(f"\n[e2e] Label Studio {LS_VERSION} ({name}) up on 127.0.0.1:{port} in {seconds:.1f} s")
    try:
        ls = LabelStudio(f"http://127.0.0.1:{port}", TOKEN, log)
        ls.get("/api/projects")  # the fixed legacy token works
        yield ls
    finally:
        stop_processes([(proc, None)])


# --------------------------------------------------------------------------------------------------- backend
def backend_env(*, redis_url: str, checkpoint: str, model_dir: Path, ls_url: str, api_key: str = TOKEN,
                **overrides) -> dict:
    """The backend's environment for a test stack; `overrides` replace any variable (e.g.
    TRAIN_EVERY_N_ANNOTATIONS="3")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "BASIC_AUTH", "REFSEG"))}
    env.update({
        "REDIS_URL": redis_url, "REFSEG_MODEL": checkpoint, "MODEL_DIR": str(model_dir),
        "DEVICE": "cpu", "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": api_key,
        # images are downloaded from LS (/data/local-files/ with the token), as from a remote LS, or from a test
        # image server on 127.0.0.1 (ImageServer), which has to be named to pass the SSRF guard
        "MEDIA_ALLOWED_HOSTS": "127.0.0.1",
        "PREDICT_BUDGET_S": str(PREDICT_BUDGET_S), "INTERACTIVE_TIMEOUT_S": str(INTERACTIVE_TIMEOUT_S),
        "BATCH_CHUNK_SIZE": "1",
        "TRAIN_EVERY_N_ANNOTATIONS": "0", "FINETUNE_STEPS": "3", "FINETUNE_BATCH_SIZE": "2",
        "FINETUNE_MIN_ANNOTATIONS": "2", "FINETUNE_PROMOTE_TOLERANCE": "1.0",  # promote whatever 3 steps give
        "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Backend:
    """RQ workers (`worker-infer` on interactive+batch, `worker-train` on train, as docker/compose.yml) and
    gunicorn serving `_wsgi:app`, each logging to `<logdir>/<prefix><name>.log`."""

    NAMES = ("gunicorn", "worker-infer", "worker-train")

    def __init__(self, env: dict, logdir: Path, prefix: str = "") -> None:
        self.env, self.logdir, self.prefix = env, logdir, prefix
        self.procs: Dict[str, tuple] = {}
        self.url = ""

    def log(self, name: str) -> Path:
        return self.logdir / f"{self.prefix}{name}.log"

    def logs(self) -> str:
        return "\n".join(f"--- {self.prefix}{n}\n{tail(self.log(n), 2500)}" for n in self.NAMES)

    def _start(self, name: str, cmd: list) -> None:
        fh = self.log(name).open("a")
        self.procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT), fh)

    def start(self, port: Optional[int] = None) -> "Backend":
        import redis
        from rq import Worker

        self._start("worker-infer", [PY, "-m", "workers.worker", "--queues", "interactive,batch", "--threads", "1"])
        self._start("worker-train", [PY, "-m", "workers.worker", "--queues", "train", "--threads", "1"])
        port = port or free_port()
        self._start("gunicorn", [PY, "-m", "gunicorn", "--workers", "1", "--threads", "16", "--timeout", "120",
                                 "-b", f"127.0.0.1:{port}", "_wsgi:app"])
        self.url = f"http://127.0.0.1:{port}"
        conn = redis.Redis.from_url(self.env["REDIS_URL"])
        pids = {self.procs[n][0].pid for n in ("worker-infer", "worker-train")}

        def up():
            for name, (p, _) in self.procs.items():
                if p.poll() is not None:
                    raise AssertionError(f"{self.prefix}{name} exited:\n{tail(self.log(name))}")
            # our two workers registered (a Redis that outlived an earlier stack may still list dead ones)
            if not pids <= {w.pid for w in Worker.all(connection=conn)}:
                return False
            try:
                return requests.get(self.url + "/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_for(up, 180, "backend (RQ workers + gunicorn)", 0.3)
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, name: str) -> None:
        """SIGKILL one process (a crash: no clean-up of its RQ registrations or of our markers)."""
        p, fh = self.procs.pop(name)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(10)
        fh.close()

    def stop(self) -> None:
        stop_processes(list(self.procs.values()))
        self.procs.clear()


@contextlib.contextmanager
def running_backend(env: dict, logdir: Path, prefix: str = ""):
    backend = Backend(env, logdir, prefix).start()
    try:
        yield backend
    finally:
        backend.stop()


def prediction_queues_idle(redis_url: str) -> bool:
    """No prediction job waiting or running (interactive and batch queues): whatever they deliver has arrived
    (a job POSTs its late results to Label Studio before it finishes)."""
    import redis
    from rq import Queue
    from rq.registry import StartedJobRegistry

    conn = redis.Redis.from_url(redis_url)
    return all(Queue(q, connection=conn).count == 0 and StartedJobRegistry(q, connection=conn).count == 0
               for q in ("interactive", "batch"))


def prediction_queue_counts(redis_url: str) -> dict:
    import redis
    from rq import Queue
    from rq.registry import StartedJobRegistry

    conn = redis.Redis.from_url(redis_url)
    return {q: {"queued": Queue(q, connection=conn).count, "started": StartedJobRegistry(q, connection=conn).count}
            for q in ("interactive", "batch")}


def wait_settled(redis_url: str, check, timeout: float, what: str):
    """Wait until the prediction queues are idle (nothing more can arrive) AND `check()` is truthy; returns that
    value. Replaces "sleep and hope nothing else comes": once the queues are idle, nothing else does."""
    last = {}

    def settled():
        last["idle"] = prediction_queues_idle(redis_url)
        last["check"] = check()
        return last["idle"] and last["check"]

    try:
        return wait_for(settled, timeout, what, 0.3)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (condition met: {bool(last.get('check'))}; prediction queues: "
                             f"{prediction_queue_counts(redis_url)})") from None


def is_project_key(key: str, project_id, created=None) -> bool:
    """Whether `key` (a directory under MODEL_DIR, a project's "key" in /status.json) names LS project `project_id`:
    the bare id, or a key "<id>-<created>-..." that also names the project's creation stamp (unix seconds, as
    Label Studio sends it in "<id>.<created>") and the Label Studio instance. With `created` given, a key of
    the second kind must carry that stamp (two Label Studios' project 1 then never match each other)."""
    key = str(key)
    if key == str(project_id):
        return True
    parts = key.split("-")
    return len(parts) >= 2 and parts[0] == str(project_id) and (created is None or parts[1] == str(created))


def checkpoint_dir(model_dir: Path, project_id, version: str, created=None) -> Path:
    """Where the backend saved `version` of LS project `project_id`: MODEL_DIR/<project key>/<version>."""
    found = [p for p in Path(model_dir).glob(f"*/{version}")
             if p.is_dir() and is_project_key(p.parent.name, project_id, created)]
    assert len(found) == 1, f"checkpoint of {version} for project {project_id} under {model_dir}: {found}"
    return found[0]


def backend_status(backend_url: str) -> dict:
    r = requests.get(backend_url + "/status.json", timeout=10)
    r.raise_for_status()
    return r.json()


def lineage_of(backend_url: str, version: str, project_id=None, created=None) -> list:
    """The lineage (oldest first) of the project that serves `version` (and is LS project `project_id`, created
    at `created`, when given), from the backend's /status.json."""
    projects = [p for p in backend_status(backend_url)["projects"] if p["serving"]["version"] == version
                and (project_id is None or is_project_key(p["key"], project_id, created))]
    assert len(projects) == 1, f"{len(projects)} projects serve {version}: {[p['key'] for p in projects]}"
    return projects[0]["lineage"]


# ------------------------------------------------------------------------------------------------ image server
class ImageServer:
    """Serves the files under `root` on 127.0.0.1. Requests for the paths in `held` are answered only once
    `release()` is called (or after `max_hold_s`): a slow media server whose delay depends on the test's
    progress, not on the machine's speed. `requests` lists (path, monotonic time) of every request received."""

    def __init__(self, root: Path, max_hold_s: float = 25.0) -> None:
        self.root = Path(root).resolve()
        self.max_hold_s = max_hold_s
        self.held: set = set()
        self._released = threading.Event()
        self._released.set()
        self.requests: list = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(urlsplit(self.path).path).lstrip("/")
                with server.lock:
                    server.requests.append((path, time.monotonic()))
                    held = path in server.held
                if held:
                    server._released.wait(server.max_hold_s)
                target = (server.root / path).resolve()
                if server.root not in target.parents or not target.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = target.read_bytes()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client died meanwhile (a killed worker)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def url_for(self, path: Path) -> str:
        return f"{self.url}/{self.rel(path)}"

    def hold(self, paths) -> None:
        """Hold back the answers for these paths (relative to root) until release()."""
        with self.lock:
            self.held = {str(p) for p in paths}
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def requested(self, paths=None, since: float = 0.0) -> list:
        with self.lock:
            return [(p, t) for p, t in self.requests if t >= since and (paths is None or p in paths)]

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
