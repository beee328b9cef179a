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
# --no-cache-dir: pip would otherwise keep a second copy of every wheel it downloads (torch's CUDA build and its
# nvidia-* wheels are several GB) in ~/.cache/pip; a CI run once died of a full disk (ENOSPC) 30 s into this step.
PIP_INSTALL=(.venv/bin/python -m pip install -q --no-cache-dir)
report_disk() { echo "[bootstrap] disk: $(df -Ph . | awk 'NR==2 {print $4 " free of " $2 " on " $6}')" >&2; }
# Reinstall only when the requirement files changed since the last successful install.
stamp=.venv/.requirements.sha
want=$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # the install's peak: the .venv (about 6 GB on x86_64, torch's CUDA build) plus pip's unpacking
  report_disk
  if [ "$(df -Pk . | awk 'NR==2 {print $4}')" -lt $((8 * 1024 * 1024)) ]; then
    echo "[bootstrap] warning: less than 8 GB free; the install may fail with 'No space left on device'" >&2
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv" >&2
    "$PY" -m venv .venv
    "${PIP_INSTALL[@]}" --upgrade pip
  fi
  echo "[bootstrap] installing Python requirements (torch from local disk where available)" >&2
  "${PIP_INSTALL[@]}" -r requirements-test.txt || { report_disk; exit 1; }
  # sam2 builds from source against the torch installed above (requirements-sam2.txt says why)
  SAM2_BUILD_CUDA=0 "${PIP_INSTALL[@]}" --no-build-isolation --no-deps -r requirements-sam2.txt
  "${PIP_INSTALL[@]}" --no-deps -e .
  echo "$want" > "$stamp"
fi
