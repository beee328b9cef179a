"""Suite-wide rule: where the services must be tested (CI: `CI=true`, or REFSEG_REQUIRE_SERVICES=1 as .ci/run sets
it), a skipped service test (tests/backend, tests/reliability: e.g. no redis-server on the machine) fails the
run instead of letting pytest exit 0 with nothing tested."""
from __future__ import annotations

import os

import pytest

SERVICE_TESTS = ("tests/backend/", "tests/reliability/")
_skipped: list = []


def services_required() -> bool:
    return os.environ.get("REFSEG_REQUIRE_SERVICES") == "1" or os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_logreport(report):
    if report.skipped and report.nodeid.startswith(SERVICE_TESTS):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    if _skipped and services_required() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _skipped and services_required():
        terminalreporter.section("service tests skipped", sep="!")
        terminalreporter.write_line(f"{len(_skipped)} service test(s) skipped where they must run "
                                    "(CI=true or REFSEG_REQUIRE_SERVICES=1): the run fails. First reason: "
                                    f"{_skipped[0][1]}")
