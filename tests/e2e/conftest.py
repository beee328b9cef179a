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
from pathlib import Path

import pytest
from e2e_support import (
    E2E_HELP,
    LS_VERSION,
    PY,
    ROOT,
    Backend,
    label_studio_server,
    save_sharpened_tiny,
    tail,
)
from e2e_support import (
    backend_env as make_backend_env,
)
from service_fixtures import redis_url, tmp_root  # noqa: F401 (fixtures, shared with tests/backend)


def pytest_collection_modifyitems(config, items):
    selected = "e2e" in (config.option.markexpr or "") or os.environ.get("REFSEG_E2E") == "1"
    if selected:
        return
    skip = pytest.mark.skip(reason=E2E_HELP)
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(skip)


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
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir", "--upgrade", "pip"],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir",
                  f"label-studio=={LS_VERSION}"]]
        for cmd in steps:
            if cmd[1:3] == ["-m", "venv"] and (venv / "bin" / "python").exists():
                continue
            try:
                r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=1200)
            except subprocess.TimeoutExpired:
                _unavailable(f"installing label-studio=={LS_VERSION} timed out (log: {log})")
            if r.returncode != 0:
                errors = [ln for ln in tail(log, 20000).splitlines() if "ERROR" in ln or "rror:" in ln]
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
    """LS's LOCAL_FILES_DOCUMENT_ROOT; the tests put their images in docroot/ds (a local-files storage) and
    docroot/scenes (scene chips)."""
    d = e2e_root / "docroot"
    (d / "ds").mkdir(parents=True)
    return d


@pytest.fixture(scope="session")
def label_studio(ls_venv, e2e_root, docroot):
    """The session's Label Studio (legacy token), for the tests that need no Label Studio of their own."""
    with label_studio_server(ls_venv, e2e_root, docroot, "label-studio") as ls:
        yield ls


@pytest.fixture(scope="session")
def tiny_checkpoint(e2e_root):
    return save_sharpened_tiny(e2e_root / "base-ckpt", "tiny-e2e")


@pytest.fixture(scope="session")
def backend_env(e2e_root, redis_url, tiny_checkpoint, label_studio):
    return make_backend_env(redis_url=redis_url, checkpoint=tiny_checkpoint, model_dir=e2e_root / "models",
                            ls_url=label_studio.url)


@pytest.fixture(scope="session")
def backend(backend_env, e2e_root):
    """The session's backend (workers + gunicorn) on the session's Label Studio, stopped by PID at the end."""
    b = Backend(backend_env, e2e_root).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def backend_url(backend):
    return backend.url


@pytest.fixture(scope="session")
def backend_logs(backend):
    return backend.logs


@pytest.fixture(scope="session")
def synth_samples(e2e_root, docroot):
    """Synthetic 128 px scenes, 3 expressions each (126 samples), in docroot/ds: {"url" (local files), "path",
    "expression", "image", "mask"}."""
    from formats.datasets.interchange import read_interchange
    from formats.datasets.sample_mask import load_sample_mask
    from formats.images import load_image
    from refseg_model.data.synth import write_dataset

    synth = e2e_root / "synth"
    write_dataset(synth, n_images=42, size=128, seed=5, expressions_per_image=3, progress=False)
    out = []
    for s in read_interchange(synth):
        dst = docroot / "ds" / Path(s.image).name
        if not dst.exists():
            shutil.copyfile(s.image, dst)
        out.append({"url": f"/data/local-files/?d=ds/{dst.name}", "path": dst, "expression": s.expression,
                    "image": load_image(dst), "mask": load_sample_mask(s)})
    return out


@pytest.fixture(scope="session")
def local_model(tiny_checkpoint):
    """The model as the workers run it (same weights, 1 thread: identical arithmetic)."""
    import torch

    from refseg_model.predictor import RefSegPredictor

    torch.set_num_threads(1)
    return RefSegPredictor.from_spec(tiny_checkpoint, device="cpu")
