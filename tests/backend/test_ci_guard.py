"""Without redis-server the service tests skip; under CI (REFSEG_REQUIRE_SERVICES=1, set by .ci/run) that fails
the run (tests/conftest.py) instead of passing with nothing tested."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest_without_redis(tmp_path, **env) -> subprocess.CompletedProcess:
    bare = tmp_path / "bin"  # a PATH without redis-server
    bare.mkdir(exist_ok=True)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "REFSEG_REQUIRE_SERVICES")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                           "tests/backend/test_liveness.py"], cwd=ROOT, env={**clean, "PATH": str(bare), **env},
                          capture_output=True, text=True, timeout=300)


def test_service_tests_that_skip_fail_the_run_under_ci(tmp_path):
    local = _pytest_without_redis(tmp_path)
    assert local.returncode == 0 and "skipped" in local.stdout, local.stdout[-2000:]  # a laptop without Redis
    ci = _pytest_without_redis(tmp_path, REFSEG_REQUIRE_SERVICES="1")
    assert ci.returncode != 0, ci.stdout[-2000:]
    assert "service test(s) skipped" in ci.stdout and "redis-server" in ci.stdout, ci.stdout[-2000:]
    assert _pytest_without_redis(tmp_path, CI="true").returncode != 0
