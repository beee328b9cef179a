#!/usr/bin/env bash
# The test command of the README: installs what is missing, then runs the whole suite
# (real redis-server, real RQ workers, real HTTP; no GPU needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
