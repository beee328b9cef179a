#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs the whole suite
# (real redis-server, real RQ workers, real HTTP; no GPU needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --test
# the layers (pyproject.toml [tool.importlinter]): a forbidden import, lazy ones included, fails here
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest -q "$@"
