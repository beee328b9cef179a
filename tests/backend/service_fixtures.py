"""The session fixtures that the backend suite (tests/backend) and the reliability suite (tests/reliability) both
start from: a scratch folder, the tiny preset saved as a checkpoint with a sharpened last layer (so that masks vary
with the input), a fake Label Studio REST API and a redis-server (tests/backend and tests/e2e). Each suite's conftest
imports the ones it uses, which registers them there; each suite still gets its own instances."""
from __future__ import annotations

import pytest
from backend_support import running_redis, save_sharpened_tiny
from fake_ls import FakeLabelStudio


@pytest.fixture(scope="session")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_root):
    return save_sharpened_tiny(tmp_root / "base-ckpt", "tiny-test")


@pytest.fixture(scope="session")
def fake_ls():
    ls = FakeLabelStudio()
    yield ls
    ls.close()


@pytest.fixture(scope="session")
def redis_url(tmp_root):
    """A redis-server on a free loopback port, for the whole session."""
    with running_redis(tmp_root / "redis") as url:
        yield url
