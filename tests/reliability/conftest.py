"""Fixtures of the reliability suite: one shared deployment (Redis with AOF, an inference worker, a trainer,
gunicorn) for the bad-input tests; the destructive fault tests build their own (see test_faults.py)."""
from __future__ import annotations

import pytest
from rel_stack import Stack  # also puts tests/backend's helpers on sys.path
from service_fixtures import fake_ls, tiny_checkpoint, tmp_root  # noqa: F401 (fixtures, shared with tests/backend)


@pytest.fixture(scope="session")
def stack(tmp_root, tiny_checkpoint, fake_ls):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    s = Stack(tmp_root / "shared", tiny_checkpoint, fake_ls.url)
    try:
        yield s.start()
    finally:
        s.close()
