#!/usr/bin/env bash
# Run the ML backend on this machine: Redis (started here unless one answers on REDIS_URL), an inference worker
# (queues interactive,batch), a trainer (queue train) and the HTTP backend on 0.0.0.0:${PORT:-9090}. Ctrl-C stops
# everything this script started.
#
#   LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=<token> bash scripts/serve.sh
#
# Serving and training run in separate processes: an RQ worker runs one job at a time, so a fine-tune in the
# inference worker would hold interactive requests for minutes. They split the CPUs (`--threads infer`: ceil(n/2)
# torch threads, `--threads train`: the rest, at least 1) and the trainer runs at nice 10, so a fine-tune cannot
# starve interactive requests. With two or more GPUs and TRAIN_DEVICE unset, inference uses cuda:0 and
# fine-tuning cuda:1; set DEVICE / TRAIN_DEVICE to choose.
#
# Other settings (REFSEG_MODEL, MODEL_DIR, DEVICE, TRAIN_DEVICE, BASIC_AUTH_USER/PASS, ...): README, jobs/settings.py.
# REFSEG_PY=/path/to/python runs with that interpreter and skips scripts/bootstrap.sh (benchmarks/serve_split.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${REFSEG_PY:-}" ]; then
  PY="$REFSEG_PY"
else
  bash scripts/bootstrap.sh
  PY=.venv/bin/python
fi

export PORT="${PORT:-9090}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export MODEL_DIR="${MODEL_DIR:-$PWD/runs/models}"
export REFSEG_MODEL="${REFSEG_MODEL:-demo}"
mkdir -p runs/redis runs/logs "$MODEL_DIR"

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # on SIGTERM an RQ worker first finishes its job (warm shutdown), which for a fine-tune can take minutes: give
  # everything 10 s, then stop what is left (a fine-tune cut short is failed by the next worker to start, and
  # the next trigger trains: README, "When things fail")
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

redis_up() { "$PY" -c "import redis,sys; redis.Redis.from_url('$REDIS_URL', socket_connect_timeout=1).ping()" 2>/dev/null; }
if redis_up; then
  echo "[serve] using the Redis at $REDIS_URL"
else
  port=$("$PY" -c "from urllib.parse import urlsplit; print(urlsplit('$REDIS_URL').port or 6379)")
  echo "[serve] starting redis-server on 127.0.0.1:$port (append-only file in runs/redis)"
  redis-server --bind 127.0.0.1 --port "$port" --appendonly yes --dir "$PWD/runs/redis" \
    --logfile "$PWD/runs/logs/redis.log" &
  pids+=($!)
  for _ in $(seq 50); do redis_up && break; sleep 0.2; done
  redis_up || { echo "[serve] redis-server did not start; see runs/logs/redis.log" >&2; exit 1; }
fi

gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
if [ -z "${TRAIN_DEVICE:-}" ] && [ "${gpus:-0}" -ge 2 ] && [[ "${DEVICE:-auto}" =~ ^(auto|cuda)$ ]]; then
  export DEVICE=cuda:0 TRAIN_DEVICE=cuda:1  # a GPU each: a fine-tune never competes with suggestions
fi
"$PY" -m workers.worker --queues interactive,batch --threads infer &
pids+=($!)
"$PY" -m workers.worker --queues train --no-preload --threads train --nice 10 &
pids+=($!)
"$PY" -m gunicorn --workers 1 --threads 16 --timeout 120 --bind "0.0.0.0:$PORT" _wsgi:app &
pids+=($!)

for _ in $(seq 100); do
  "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null && break
  sleep 0.3
done
key_state="<unset>"; [ -n "${LABEL_STUDIO_API_KEY:-}" ] && key_state="<set>"
host_ip=$(hostname -I 2>/dev/null | awk '{print $1}')
cat <<MSG

[serve] refseg-assist ML backend is up on port $PORT (base model: $REFSEG_MODEL; the inference worker loads it
now; fine-tunes run in a separate trainer, device ${TRAIN_DEVICE:-${DEVICE:-auto}}).
Connect Label Studio: Project -> Settings -> Model -> Connect Model
  Backend URL:  http://${host_ip:-<this host>}:$PORT     (http://localhost:$PORT if LS runs on this machine;
                LS blocks local/private backend URLs unless started with USE_DEFAULT_BANNED_SUBNETS=false)
  Interactive preannotations: on (for <TextArea> text prompts)
For LS-hosted images, late batch results and fine-tuning, this backend needs LS's URL and an API key:
  LABEL_STUDIO_URL=${LABEL_STUDIO_URL:-<unset>}  LABEL_STUDIO_API_KEY=$key_state
  (restart with them set: LABEL_STUDIO_URL=http://localhost:8080 LABEL_STUDIO_API_KEY=... bash scripts/serve.sh)
Metrics: http://localhost:$PORT/metrics    Stop: Ctrl-C
MSG
wait -n "${pids[@]}" || true
echo "[serve] a process exited; stopping the others" >&2
