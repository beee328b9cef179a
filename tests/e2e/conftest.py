"""A real Label Studio 1.23.2 and this backend, both on 127.0.0.1, for the end-to-end tests.

* Label Studio lives in its own virtualenv (`.e2e/lsenv`, or $REFSEG_E2E_LSENV), created here on first use with
  `pip install label-studio==1.23.2` (its pins on rq/redis/numpy clash with ours). No PyPI -> the tests skip
  with the reason (or fail, with REFSEG_E2E_REQUIRE=1, for CI stages that must not pass vacuously).
* It starts on a free port with a throwaway data dir, a fixed legacy API token, USE_DEFAULT_BANNED_SUBNETS=false
  (else it refuses a backend on 127.0.0.1), local-files serving for the test images and a low
  ML_TIMEOUT_PREDICT, so that a big "Retrieve predictions" outlasts it.
* The backend is what scripts/serve.sh runs: redis-server, RQ workers (`python -m workers.worker`; one for
  interactive+batch, one for train, like docker/compose.yml) and gunicorn serving `_wsgi:app`, with the `tiny`
  preset saved as a checkpoint (the test process loads the same weights to know what the masks must be).

The e2e tests only run when selected: `pytest -m e2e tests/e2e` (or REFSEG_E2E=1); see scripts/e2e.sh.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from e2e_support import (
    E2E_HELP,
    INTERACTIVE_TIMEOUT_S,
    LS_VERSION,
    ML_TIMEOUT_PREDICT,
    PREDICT_BUDGET_S,
    ROOT,
    TOKEN,
    free_port,
    running_redis,
    save_sharpened_tiny,
    stop_processes,
    wait_for,
)

PY = sys.executable


def pytest_collection_modifyitems(config, items):
    selected = "e2e" in (config.option.markexpr or "") or os.environ.get("REFSEG_E2E") == "1"
    if selected:
        return
    skip = pytest.mark.skip(reason=E2E_HELP)
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(skip)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _unavailable(reason: str):
    if os.environ.get("REFSEG_E2E_REQUIRE") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------- Label Studio venv
def ensure_ls_venv() -> Path:
    """The Label Studio virtualenv, created if missing (about 1 GB, 35 s from a mirror)."""
    venv = Path(os.environ.get("REFSEG_E2E_LSENV", ROOT / ".e2e" / "lsenv"))
    stamp = venv / ".refseg-e2e-ok"
    exe = venv / "bin" / "label-studio"
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == LS_VERSION:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "lsenv-install.log"
    base_python = shutil.which("python3") or getattr(sys, "_base_executable", None) or PY
    with log.open("w") as fh:
        steps = [[base_python, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"label-studio=={LS_VERSION}"]]
        for cmd in steps:
            if cmd[1:3] == ["-m", "venv"] and (venv / "bin" / "python").exists():
                continue
            try:
                r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=1200)
            except subprocess.TimeoutExpired:
                _unavailable(f"installing label-studio=={LS_VERSION} timed out (log: {log})")
            if r.returncode != 0:
                errors = [ln for ln in _tail(log, 20000).splitlines() if "ERROR" in ln or "rror:" in ln]
                _unavailable(f"cannot install label-studio=={LS_VERSION} into {venv} (no access to PyPI?): "
                             f"{(errors or ['see ' + str(log)])[-1][:300]}")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import label_studio; print(label_studio.__version__)"],
                       capture_output=True, text=True)
    if r.returncode != 0 or r.stdout.strip() != LS_VERSION:
        _unavailable(f"{venv}: label_studio import gave {r.stdout.strip()!r} {r.stderr.strip()[-300:]}")
    stamp.write_text(LS_VERSION)
    return venv


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def ls_venv():
    return ensure_ls_venv()


@pytest.fixture(scope="session")
def docroot(e2e_root):
    """LS's LOCAL_FILES_DOCUMENT_ROOT; the tests put their images in docroot/ds (a local-files storage)."""
    d = e2e_root / "docroot"
    (d / "ds").mkdir(parents=True)
    return d


class LabelStudio:
    def __init__(self, url: str, token: str, log: Path) -> None:
        self.url, self.log = url, log
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def api(self, method: str, path: str, expect=(200, 201, 204), timeout: float = 120, **kw):
        r = self.session.request(method, self.url + path, timeout=timeout, **kw)
        if r.status_code not in expect:
            raise AssertionError(f"{method} {path}: HTTP {r.status_code} {r.text[:500]}\nLS log:\n{_tail(self.log, 3000)}")
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else r

    def get(self, path, **kw):
        return self.api("GET", path, **kw)

    def post(self, path, **kw):
        return self.api("POST", path, **kw)


def _ls_env(data: Path, docroot: Path, home: Path) -> dict:
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
         "--host", url, "-p", str(port), "--username", "admin@example.com", "--password", "pass12345",
         "--user-token", TOKEN, "--enable-legacy-api-token", "--no-browser"],
        env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=data.parent)
    fh.close()

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"label-studio exited ({proc.returncode}):\n{_tail(log)}")
        try:
            return requests.get(url + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    t0 = time.monotonic()
    try:
        # a first start migrates a fresh SQLite database: ~20 s on an idle 2-core machine, minutes on a busy one
        wait_for(up, float(os.environ.get("REFSEG_E2E_LS_START_S", "900")), "Label Studio /health", 0.5)
    except BaseException:
        stop_processes([(proc, None)])
        raise
    return proc, time.monotonic() - t0


@pytest.fixture(scope="session")
def label_studio(ls_venv, e2e_root, docroot):
    """A running LS on a throwaway data dir. The data dir starts as a copy of a template made by the first
    run (a migrated database with the admin user, its org and the fixed legacy token; `.e2e/ls-template-*`),
    which cuts the start from the full migration to a restart."""
    data = e2e_root / "ls-data"
    template = ls_venv.parent / f"ls-template-{LS_VERSION}"
    env = _ls_env(data, docroot, e2e_root / "ls-home")
    log = e2e_root / "label-studio.log"
    if not (template / ".complete").exists():
        data.mkdir()
        proc, seconds = _start_ls(ls_venv, data, env, free_port(), log)
        print(f"\n[e2e] Label Studio {LS_VERSION}: first start (migrations) in {seconds:.1f} s")
        stop_processes([(proc, None)])
        shutil.rmtree(template, ignore_errors=True)
        shutil.copytree(data, template)
        (template / ".complete").write_text(LS_VERSION)
        shutil.rmtree(data)
    shutil.copytree(template, data, ignore=shutil.ignore_patterns(".complete"))
    port = free_port()
    proc, seconds = _start_ls(ls_venv, data, env, port, log)
    print(f"\n[e2e] Label Studio {LS_VERSION} up on 127.0.0.1:{port} in {seconds:.1f} s")
    try:
        ls = LabelStudio(f"http://127.0.0.1:{port}", TOKEN, log)
        ls.get("/api/projects")  # the fixed legacy token works
        yield ls
    finally:
        stop_processes([(proc, None)])


@pytest.fixture(scope="session")
def tiny_checkpoint(e2e_root):
    return save_sharpened_tiny(e2e_root / "base-ckpt", "tiny-e2e")


@pytest.fixture(scope="session")
def redis_url(e2e_root):
    with running_redis(e2e_root / "redis") as url:
        yield url


@pytest.fixture(scope="session")
def backend_env(e2e_root, redis_url, tiny_checkpoint, label_studio):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "BASIC_AUTH", "REFSEG"))}
    env.update({
        "REDIS_URL": redis_url, "REFSEG_MODEL": tiny_checkpoint, "MODEL_DIR": str(e2e_root / "models"),
        "DEVICE": "cpu", "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": TOKEN,
        # images are downloaded from LS (/data/local-files/ with the token), as from a remote LS
        "PREDICT_BUDGET_S": str(PREDICT_BUDGET_S), "INTERACTIVE_TIMEOUT_S": str(INTERACTIVE_TIMEOUT_S),
        "BATCH_CHUNK_SIZE": "1",
        "TRAIN_EVERY_N_ANNOTATIONS": "0", "FINETUNE_STEPS": "3", "FINETUNE_BATCH_SIZE": "2",
        "FINETUNE_MIN_ANNOTATIONS": "2", "FINETUNE_PROMOTE_TOLERANCE": "1.0",  # promote whatever 3 steps give
        "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
    })
    return env


@pytest.fixture(scope="session")
def backend_url(backend_env, redis_url, e2e_root):
    """Workers + gunicorn, stopped by PID at the end."""
    import redis
    from rq import Worker

    procs = []
    logs = {}

    def start(name, cmd):
        logs[name] = e2e_root / f"{name}.log"
        fh = logs[name].open("w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=backend_env, stdout=fh, stderr=subprocess.STDOUT), fh))

    try:
        start("worker-infer", [PY, "-m", "workers.worker", "--queues", "interactive,batch", "--threads", "1"])
        start("worker-train", [PY, "-m", "workers.worker", "--queues", "train", "--threads", "1"])
        port = free_port()
        start("gunicorn", [PY, "-m", "gunicorn", "--workers", "1", "--threads", "16", "--timeout", "120",
                           "-b", f"127.0.0.1:{port}", "_wsgi:app"])
        url = f"http://127.0.0.1:{port}"
        conn = redis.Redis.from_url(redis_url)

        def up():
            for (p, _), name in zip(procs, logs):
                if p.poll() is not None:
                    raise AssertionError(f"{name} exited:\n{_tail(logs[name])}")
            if len(Worker.all(connection=conn)) < 2:
                return False
            try:
                return requests.get(url + "/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, 180, "backend (RQ workers + gunicorn)", 0.3)
        yield url
    finally:
        stop_processes(procs)


@pytest.fixture(scope="session")
def backend_logs(e2e_root):
    return lambda: "\n".join(f"--- {n}\n{_tail(e2e_root / (n + '.log'), 2500)}"
                             for n in ("gunicorn", "worker-infer", "worker-train"))
