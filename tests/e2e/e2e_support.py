"""Constants and helpers shared by tests/e2e (a uniquely named module: `conftest` is taken by tests/backend)."""
from __future__ import annotations

import socket
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the LS admin's fixed legacy API token
ML_TIMEOUT_PREDICT = 8  # LS's read timeout for /predict, the interactive call and START_TRAINING (s)
PREDICT_BUDGET_S = 0.5  # the backend answers /predict within this; the rest is POSTed to LS later
INTERACTIVE_TIMEOUT_S = 6
E2E_HELP = "end-to-end test against a real Label Studio: run `bash scripts/e2e.sh` (or `pytest -m e2e tests/e2e`)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
