"""Run a worker: `python -m workers.worker --queues interactive,batch` (inference) or `--queues train` (fine-tuning).

rq.SimpleWorker runs every job in this process (no fork per job), so the model loaded by the first job stays
warm for the next ones, and CUDA is initialised in the process that uses it, never before a fork. Scale out by
starting more workers (one per GPU: CUDA_VISIBLE_DEVICES=N) against the same REDIS_URL and a MODEL_DIR every
worker can read.

Serving and training run in separate workers (scripts/serve.sh, docker/compose.yml): an RQ worker runs one job at
a time, so a worker that also trains would leave interactive requests waiting for minutes. On one machine they
share the CPUs: `--threads infer` takes ceil(n/2) of the n CPUs this process may use, `--threads train` the rest
(at least 1), and `--nice 10` lets the trainer yield to the web process and the inference worker; on a GPU host
TRAIN_DEVICE puts fine-tuning on another GPU.

At start-up (and every few seconds after), a worker fails the jobs that a dead worker left started and clears
their fine-tune markers (jobs.recovery), so that a restart never leaves a project unable to train.
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
from jobs.queues import QUEUES, TRAIN, enqueue_finetune, get_queue
from jobs.recovery import JANITOR_EVERY_S, claim_worker_name, recover_abandoned
from jobs.settings import Settings

SHARES = ("infer", "train")


def cpu_threads(spec, n_cpus=None):
    """Torch threads for `--threads`: a number, or this process's share of the CPUs when an inference worker
    and a trainer share a machine ("infer": ceil(n/2), "train": the rest, at least 1); None = torch's default."""
    if spec in (None, ""):
        return None
    n = n_cpus or len(os.sched_getaffinity(0))
    infer = (n + 1) // 2
    if spec == "infer":
        return infer
    if spec == "train":
        return max(1, n - infer)
    value = int(spec)
    if value < 1:
        raise ValueError(f"--threads must be >= 1, 'infer' or 'train', not {spec!r}")
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queues", default="interactive,batch,train",
                    help="comma-separated, in priority order (default: %(default)s)")
    ap.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    ap.add_argument("--no-preload", action="store_true", help="do not load the base model at start")
    ap.add_argument("--threads", default=None,
                    help="torch CPU threads: a number, or 'infer' / 'train' for this process's share of the CPUs "
                         "(ceil(n/2) / the rest); default: torch's")
    ap.add_argument("--nice", type=int, default=0, help="raise this process's niceness (e.g. 10 for a trainer)")
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
    try:
        threads = cpu_threads(args.threads)
    except ValueError as exc:
        ap.error(str(exc))
    if args.nice:
        os.nice(args.nice)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if names == [TRAIN]:  # a trainer: its models live on TRAIN_DEVICE
        from .runtime import set_trainer

        set_trainer(True)

    conn = rq_connection(settings.redis_url)
    conn.ping()
    name = args.name or f"refseg-{socket.gethostname()}-{os.getpid()}"
    log.info("worker %s on queues %s, torch threads %s, nice %d, settings %s", name, names, threads or "default",
             args.nice, settings.public_dict())
    if not args.no_preload and {"interactive", "batch"} & set(names):
        from .runtime import runtime

        rt = runtime()
        rt.models.get(rt.versions.base.checkpoint)  # warm before the first job (most projects use the base)
    state = state_connection(settings.redis_url)
    me = f"{socket.gethostname()}:{os.getpid()}"
    claim_worker_name(conn, state, name, me)
    worker = SimpleWorker([get_queue(conn, q) for q in names], connection=conn, serializer=JSONSerializer, name=name)
    _start_liveness(settings.redis_url, worker.name, me, log)
    _start_janitor(settings, worker.name, log)
    worker.work(burst=args.burst, logging_level=settings.log_level)
    return 0


def _start_liveness(redis_url: str, name: str, value: str, log) -> threading.Thread:
    """Refresh this worker's liveness key from a daemon thread, also while a job runs (SimpleWorker runs jobs
    in this process and sends no heartbeat of its own during them). The key vanishes WORKER_ALIVE_TTL_S after
    the process dies, however it dies; /predict then stops waiting for its job (jobs.liveness.worker_alive)."""
    state = state_connection(redis_url)

    def beat():
        failing = False
        while True:
            try:
                refresh_worker_alive(state, name, value)
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


def _start_janitor(settings: Settings, name: str, log) -> threading.Thread:
    """Recover jobs that dead workers left started (jobs.recovery): once now, before this worker takes a job (a
    job still recorded under this worker's own name is then a leftover of its previous life), then every
    JANITOR_EVERY_S."""
    rq_conn, state = rq_connection(settings.redis_url), state_connection(settings.redis_url)

    def sweep(starting: bool) -> None:
        try:
            out = recover_abandoned(rq_conn, state, name, starting=starting, enqueue_finetune=lambda project, job_id:
                                    enqueue_finetune(rq_conn, settings, project, job_id))
        except Exception as exc:  # Redis down: the next pass tries again
            log.warning("recovering abandoned jobs failed: %s", exc)
            return
        if out["recovered"]:
            log.warning("failed %d job(s) left started by dead workers: %s", len(out["recovered"]),
                        ", ".join(out["recovered"]))

    sweep(starting=True)

    def loop():
        while True:
            threading.Event().wait(JANITOR_EVERY_S)
            sweep(starting=False)

    thread = threading.Thread(target=loop, name="refseg-janitor", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    raise SystemExit(main())
