"""Fixtures of the reliability suite: one shared deployment (Redis with AOF, an inference worker, a trainer,
gunicorn) for the bad-input tests; the destructive fault tests build their own (see test_faults.py)."""
from __future__ import annotations

import pytest
from rel_stack import Stack  # also puts tests/backend's helpers on sys.path


@pytest.fixture(scope="session")
def rel_root(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def rel_checkpoint(rel_root):
    """The tiny preset with sharpened last layer, as in tests/backend (masks vary with the input)."""
    from backend_support import save_sharpened_tiny

    return save_sharpened_tiny(rel_root / "base-ckpt", "tiny-test")


@pytest.fixture(scope="session")
def rel_ls():
    from fake_ls import FakeLabelStudio

    ls = FakeLabelStudio()
    yield ls
    ls.close()


@pytest.fixture(scope="session")
def stack(rel_root, rel_checkpoint, rel_ls):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    s = Stack(rel_root / "shared", rel_checkpoint, rel_ls.url)
    try:
        yield s.start()
    finally:
        s.close()
