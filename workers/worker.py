"""Run a worker: `python -m workers.worker --queues interactive,batch` (GPU inference) or `--queues train`.

rq.SimpleWorker runs every job in this process (no fork per job), so the model loaded by the first job stays
warm for the next ones, and CUDA is initialised in the process that uses it, never before a fork. Scale out by
starting more workers (one per GPU: CUDA_VISIBLE_DEVICES=N) against the same REDIS_URL and a MODEL_DIR every
worker can read.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import threading

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from jobs.connections import rq_connection, state_connection
from jobs.liveness import WORKER_ALIVE_EVERY_S, refresh_worker_alive
from jobs.queues import QUEUES, get_queue
from jobs.settings import Settings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queues", default="interactive,batch,train",
                    help="comma-separated, in priority order (default: %(default)s)")
    ap.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    ap.add_argument("--no-preload", action="store_true", help="do not load the base model at start")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("workers.worker")
    names = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if unknown or not names:
        ap.error(f"unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}")
    names.sort(key=QUEUES.index)  # interactive before batch before train, whatever the order given
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    conn = rq_connection(settings.redis_url)
    conn.ping()
    log.info("worker on queues %s, settings %s", names, settings.public_dict())
    if not args.no_preload and {"interactive", "batch"} & set(names):
        from .runtime import runtime

        rt = runtime()
        rt.models.get(rt.versions.base.checkpoint)  # warm before the first job (most projects use the base)
    worker = SimpleWorker([get_queue(conn, q) for q in names], connection=conn, serializer=JSONSerializer,
                          name=args.name or f"refseg-{socket.gethostname()}-{os.getpid()}")
    _start_liveness(settings.redis_url, worker.name, log)
    worker.work(burst=args.burst, logging_level=settings.log_level)
    return 0


def _start_liveness(redis_url: str, name: str, log) -> threading.Thread:
    """Refresh this worker's liveness key from a daemon thread, also while a job runs (SimpleWorker runs jobs
    in this process and sends no heartbeat of its own during them). The key vanishes WORKER_ALIVE_TTL_S after
    the process dies, however it dies; /predict then stops waiting for its job (jobs.liveness.worker_alive)."""
    state = state_connection(redis_url)

    def beat():
        failing = False
        while True:
            try:
                refresh_worker_alive(state, name, str(os.getpid()))
                if failing:
                    log.info("liveness key refreshed again")
                failing = False
            except Exception as exc:  # Redis down: keep trying, the worker itself reconnects too
                if not failing:
                    log.warning("cannot refresh the liveness key: %s", exc)
                failing = True
            threading.Event().wait(WORKER_ALIVE_EVERY_S)

    thread = threading.Thread(target=beat, name="refseg-liveness", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    raise SystemExit(main())
