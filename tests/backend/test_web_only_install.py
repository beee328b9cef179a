"""`pip install .[web]` is the web service without torch: a fresh virtualenv with only that extra starts the app
under gunicorn, answers /health and /setup, and enqueues a /predict job on the real Redis.

The venv is built once per session from PyPI (pip's cache makes the second build quick) and its packages
are checked: no torch, no model stack."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
import requests
from backend_support import CONFIG_TEXT, free_port, running_redis, stop_processes, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODEL_STACK = ("torch", "torchvision", "transformers", "segment_anything", "peft", "safetensors")


@pytest.fixture(scope="module")
def web_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webvenv")
    # install from a copy of the sources: pip builds in the source folder, and a stale build/ there could
    # carry modules that no longer exist into the venv
    src = tmp / "src"
    skip = (".git", ".venv", ".e2e", "build", "runs", "data", "*.egg-info", "__pycache__", ".pytest_cache",
            ".hypothesis", "tests")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*skip))
    where = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(where)
    py = where / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[web]"], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        pytest.fail(f"pip install .[web] failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return py


def test_web_extra_installs_no_model_stack(web_venv):
    probe = ("import importlib.util, json; "
             f"print(json.dumps([m for m in {MODEL_STACK!r} if importlib.util.find_spec(m)]))")
    found = json.loads(subprocess.run([str(web_venv), "-c", probe], capture_output=True, text=True,
                                      check=True).stdout)
    assert found == [], f"the web extra pulled in {found}"


def test_web_only_venv_serves_health_setup_and_enqueues_predict(web_venv, tmp_path):
    # a Redis of its own: no worker of the other tests may take the job this test looks for
    with running_redis(tmp_path / "redis") as redis_url:
        _serve_from_web_venv(web_venv, redis_url, tmp_path)


def _serve_from_web_venv(web_venv, redis_url: str, tmp_path: Path) -> None:
    from jobs.connections import rq_connection
    from jobs.queues import BATCH, get_queue

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "BASIC_AUTH", "REFSEG", "PYTHON"))}
    env.update({"REDIS_URL": redis_url, "PREDICT_BUDGET_S": "1", "MODEL_DIR": str(tmp_path / "models")})
    gunicorn = web_venv.parent / "gunicorn"
    # run from an empty folder: the app comes from the venv's installed packages, not from this checkout
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "_wsgi.py").write_text((ROOT / "_wsgi.py").read_text())
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen([str(gunicorn), "--workers", "1", "--threads", "4", "-b", f"127.0.0.1:{port}", "_wsgi:app"],
                            cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _up(url), 60, "gunicorn from the web-only venv")
        assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()[-3000:]
        health = requests.get(f"{url}/health", timeout=5).json()
        assert health["status"] == "UP" and health["base_model_version"] == "demo-v3"
        setup = requests.post(f"{url}/setup", json={"project": "3.1712345678", "schema": CONFIG_TEXT}, timeout=5)
        assert setup.status_code == 200 and setup.json()["model_version"] == "demo-v3"
        queue = get_queue(rq_connection(redis_url), BATCH)
        before = set(queue.job_ids)
        task = {"id": 31, "data": {"image": "http://127.0.0.1:9/x.png", "expression": "the pond"}}
        body = {"project": "3.1712345678", "label_config": CONFIG_TEXT, "tasks": [task]}
        r = requests.post(f"{url}/predict", json=body, timeout=30)
        assert r.status_code == 200 and len(r.json()["results"]) == 1
        new = [queue.fetch_job(j) for j in set(queue.job_ids) - before]
        assert len(new) == 1 and new[0].kwargs["tasks"][0]["id"] == 31  # enqueued for a worker, none ran it
        loaded = subprocess.run([str(web_venv), "-c", "import sys, _wsgi; print(sorted(m for m in sys.modules "
                                 "if m.split('.')[0] in ('torch', 'refseg_model', 'workers')))"],
                                cwd=run_dir, env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert loaded == "[]"
        for job in new:
            job.delete()
    finally:
        stop_processes([(proc, log)])


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False
