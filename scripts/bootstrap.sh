#!/usr/bin/env bash
# Installs what a fresh machine lacks: redis-server (Debian package) and the project's virtualenv (.venv).
# Idempotent: re-running it only installs what is missing or changed. Used by serve.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "[bootstrap] installing redis-server" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
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
