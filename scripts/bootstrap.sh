#!/usr/bin/env bash
# Installs what a fresh machine lacks: redis-server (Debian package) and the project's virtualenv (.venv); with
# --test also Debian's chromium, for the status page's browser test.
# Idempotent: re-running it only installs what is missing or changed. Used by serve.sh and test.sh (--test).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[bootstrap] installing redis-server" >&2
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# Debian's chromium: the status page's browser test drives it with playwright (never `playwright install`, whose
# browser download is not reachable). Not fatal: without it that one test skips and says why.
if [ "${1:-}" = "--test" ] && [ ! -x /usr/bin/chromium ]; then
  echo "[bootstrap] installing chromium (for the status page's browser test)" >&2
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "[bootstrap] chromium could not be installed: the status page's browser test will skip" >&2
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv" >&2
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# Reinstall only when the requirement files changed since the last successful install.
stamp=.venv/.requirements.sha
want=$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing Python requirements (torch from local disk where available)" >&2
  .venv/bin/python -m pip install -q -r requirements-test.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
