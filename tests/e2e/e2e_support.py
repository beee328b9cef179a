"""Constants and helpers shared by tests/e2e (a uniquely named module: `conftest` is taken by tests/backend)."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LS_VERSION = "1.23.2"
TOKEN = "0123456789abcdef0123456789abcdef01234567"  # the LS admin's fixed legacy API token
ML_TIMEOUT_PREDICT = 8  # LS's read timeout for /predict, the interactive call and START_TRAINING (s)
PREDICT_BUDGET_S = 0.5  # the backend answers /predict within this; the rest is POSTed to LS later
INTERACTIVE_TIMEOUT_S = 6
E2E_HELP = "end-to-end test against a real Label Studio: run `bash scripts/e2e.sh` (or `pytest -m e2e tests/e2e`)"


# the backend tests' helpers (tests/backend is not a package: its modules are imported top-level)
sys.path.insert(0, str(ROOT / "tests" / "backend"))
from backend_support import free_port, running_redis, save_sharpened_tiny, stop_processes, wait_for  # noqa: E402,F401

