#!/usr/bin/env bash
# End-to-end test against a real Label Studio 1.23.2 (tests/e2e): creates .e2e/lsenv (Label Studio in its own
# virtualenv, ~1 GB, needs PyPI once), starts Label Studio, redis-server, RQ workers and gunicorn on 127.0.0.1,
# runs the checks through Label Studio's API and stops everything (about 4.5 min on 2 CPU cores: the main flow,
# a PAT-only Label Studio with webhook-count training and > 100 tasks, a GeoTIFF scene round trip, and two lives
# of the stack on one runs/ + Redis). Extra arguments go to pytest (e.g. -k scene).
#   REFSEG_E2E_REQUIRE=1   fail (instead of skip) when Label Studio cannot be installed (for CI)
#   REFSEG_E2E_LSENV=DIR   use/create the Label Studio virtualenv there
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q -m e2e tests/e2e -p no:cacheprovider "$@"
