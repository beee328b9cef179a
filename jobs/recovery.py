"""Jobs that a dead worker left started: found by the workers (at start-up, then every JANITOR_EVERY_S), failed
with a reason, and their fine-tune markers cleared.

Why: an RQ SimpleWorker killed mid-job (SIGKILL, OOM, a container restart) leaves its job in RQ's started
registry, where RQ only notices it when the entry expires (job timeout + 60 s: over 6 hours for a fine-tune),
and leaves the project's `train:running` marker naming that job. Until then the project could not train
(jobs.finetune_state). Here a job counts as abandoned when its worker is dead by our liveness rule
(jobs.liveness: key gone for longer than the grace), or, at a worker's start-up, when it names that very worker
(a restart under the same name: the process that ran it is gone).

What happens to an abandoned job:
* prediction jobs (interactive, batch): failed with the reason. The /predict waiting for one reports the reason
  for its tasks; a task handed over for late delivery loses its pending marker at the next "Retrieve
  predictions" (its job is no longer alive) and is predicted again. They are not re-run: a request that already
  gave up, or answered the task with an error, must not also get a late post.
* fine-tunes: failed with the reason; the project's `running` marker is cleared, and a rerun requested while the
  job ran is enqueued now (jobs.finetune_state.finish_finetune), so the first trigger after a restart trains.
Several workers may look at once: a Redis key per job makes sure only one of them recovers it.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional

import redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from labelstudio.identity import ProjectRef

from . import finetune_state, keys, stats
from .liveness import DEAD, UNDECIDED, worker_state
from .queues import JOB_FINETUNE, QUEUES

log = logging.getLogger(__name__)

JANITOR_EVERY_S = 5.0
RECOVERED_TTL_S = 24 * 3600


def recover_abandoned(rq_conn: redis.Redis, state: redis.Redis, me: str, *, starting: bool,
                      enqueue_finetune: Callable[[ProjectRef, str], None]) -> dict:
    """One pass over the started registries of every queue. `me`: this worker's name (at start-up, `starting`:
    jobs recorded as started by a worker of this name are abandoned). `enqueue_finetune(project, job_id)` puts a
    successor fine-tune on the train queue. Returns {"recovered": [job ids], "undecided": [job ids]}."""
    recovered: List[str] = []
    undecided: List[str] = []
    for queue_name in QUEUES:
        registry = StartedJobRegistry(queue_name, connection=rq_conn, serializer=JSONSerializer)
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            job = Job.fetch_many([job_id], connection=rq_conn, serializer=JSONSerializer)[0]
            if job is None:  # deleted under RQ's feet: nothing to run or to report
                rq_conn.zrem(registry.key, f"{job_id}:{execution_id}")
                continue
            worker = job.worker_name or ""
            if worker == me:
                if not starting:
                    continue  # this very process runs it
                verdict, why = DEAD, f"worker {worker} was restarted while running it"
            elif not worker:
                continue  # no evidence either way: RQ's own expiry handles it
            else:
                verdict, why = worker_state(state, worker), f"worker {worker} died while running it"
            if verdict == UNDECIDED:
                undecided.append(job_id)
            elif verdict == DEAD and state.set(keys.recovered(job_id), me, nx=True, ex=RECOVERED_TTL_S):
                _recover(rq_conn, state, registry, job, execution_id, f"abandoned: {why} (found by {me})",
                         enqueue_finetune)
                recovered.append(job_id)
    return {"recovered": recovered, "undecided": undecided}


def _recover(rq_conn, state, registry: StartedJobRegistry, job: Job, execution_id: str, reason: str,
             enqueue_finetune) -> None:
    log.warning("job %s (%s): %s; failed", job.id, job.description, reason)
    with rq_conn.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        job._handle_failure(reason, pipe, worker_name="")  # failed registry + a Result with the reason
        pipe.zrem(registry.key, f"{job.id}:{execution_id}")
        pipe.execute()
    stats.incr(state, "recovered:" + ("finetune" if job.func_name == JOB_FINETUNE else "predict"))
    if job.func_name != JOB_FINETUNE:
        return
    project = _project_of(job)
    if project is None:
        return
    if stats.finetune_job(state, project.key) == job.id:  # not if a newer run's status is there already
        stats.set_finetune_status(state, project.key, state="failed", job=job.id, reason=reason)
    successor = finetune_state.finish_finetune(state, project.key, job.id)
    if successor:
        log.info("project %s: a fine-tune was requested while %s ran: enqueueing %s", project, job.id, successor)
        enqueue_finetune(project, successor)


def claim_worker_name(rq_conn: redis.Redis, state: redis.Redis, name: str, me: str) -> bool:
    """Before a worker registers as `name`: if RQ still lists a worker of that name (not marked dead) whose
    liveness key is gone, names this very process (`me`, "host:pid": a container restarted with the same hostname
    and pid) or a process of this host that no longer exists, that worker is dead: mark it so, or RQ refuses to
    start this one ("There exists an active worker named ...") until the dead one's record expires (up to 8
    minutes), and its started jobs wait for a restart under the same name. True if a dead record was cleared."""
    from rq import Worker

    key = Worker.redis_worker_namespace_prefix + name
    if not rq_conn.exists(key) or rq_conn.hexists(key, "death"):
        return False
    alive = state.get(keys.worker_alive(name))
    if alive is not None and alive != me and not _gone_from_this_host(alive, me):
        return False  # another living process has this name: RQ will refuse this one, as it should
    dead = Worker.find_by_key(key, connection=rq_conn)
    if dead is None:
        return False
    dead.register_death()
    log.warning("worker %s: the previous worker of this name is dead (%s); its record is cleared", name,
                "liveness key gone" if alive is None else "same host and pid: restarted")
    return True


def _gone_from_this_host(holder: str, me: str) -> bool:
    """Whether `holder` ("host:pid") is a process of this host (the host part of `me`) that has exited."""
    host, _, pid = holder.rpartition(":")
    if host != me.rpartition(":")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, another user's
        return False
    return False


def _project_of(job: Job) -> Optional[ProjectRef]:
    try:
        return ProjectRef.from_job((job.kwargs or {}).get("project"))
    except Exception:  # unreadable arguments (not our serializer): nothing to clear
        return None
