"""The session fixtures that the backend suite (tests/backend) and the reliability suite (tests/reliability) both
start from: a scratch folder, the tiny preset saved as a checkpoint with a sharpened last layer (so that masks vary
with the input), and a fake Label Studio REST API. Each suite's conftest imports them, which registers them there;
each suite still gets its own instances."""
from __future__ import annotations

import pytest
from backend_support import save_sharpened_tiny
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
