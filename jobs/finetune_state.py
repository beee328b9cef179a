"""When to fine-tune a project: annotation counting and one fine-tune job per project, never dropped.

Per project (its key, labelstudio.identity.ProjectRef.key), in Redis:
    refseg:project:<key>:new_annotations   annotations created/updated since the last trigger
    refseg:project:<key>:train:queued      id of the fine-tune job waiting in the `train` queue
    refseg:project:<key>:train:running     id of the fine-tune job running now (expires: a dead worker
                                           cannot block the project forever)
    refseg:project:<key>:train:rerun       a trigger arrived while a job was running
    refseg:project:<key>:train:recheck     a re-check job is queued (see below)

A trigger while a job is queued is absorbed by it (the job pulls all annotations from Label Studio when it
starts); a trigger while one is running sets `rerun`, and the running job enqueues its successor when it
finishes. So at most one job per project is queued and at most one runs, and no trigger is lost.
A marker whose job is dead (its worker's liveness key gone for longer than the grace, jobs.liveness) is
cleared and the trigger enqueues a new job. A marker whose job is *undecided* (the key missing for less than the
grace: a crashed worker, or a living one that has not refreshed its key since a Redis restart) cannot be judged
now: the trigger queues a re-check job (`recheck`, on the train queue) that decides once the grace is over and
then enqueues the fine-tune if the job was dead; a living job runs the rerun itself. Workers also fail jobs that
a dead worker left started and clear their markers (jobs.recovery).
The transitions are Lua scripts: atomic against concurrent webhooks and workers.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable

import redis

from labelstudio.identity import ProjectRef

from . import keys
from .liveness import DEAD, LIVE, UNDECIDED, WORKER_ALIVE_TTL_S, WORKER_MISSING_GRACE_S, job_state_by_id
from .queues import enqueue_finetune, enqueue_recheck

ENQUEUE, ALREADY_QUEUED, RERUN_REQUESTED = "enqueued", "already-queued", "rerun-requested"
# request_finetune answers UNDECIDED (jobs.liveness) when a marker names a job whose liveness cannot be judged yet
RECHECK_SCHEDULED = "recheck-scheduled"  # trigger(): ... and a re-check job will decide
RECHECK_TTL_S = 600

_REQUEST = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'already-queued' end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('SET', KEYS[3], '1') return 'rerun-requested' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 'enqueue'
"""
_START = """
local running = redis.call('GET', KEYS[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if running and running ~= ARGV[1] then redis.call('SET', KEYS[3], '1') return 'busy' end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], '0')
return 'ok'
"""
_FINISH = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 'enqueue'
end
return 'done'
"""
_COUNT = """
local n = redis.call('INCR', KEYS[1])
local every = tonumber(ARGV[1])
if every > 0 and n >= every then redis.call('SET', KEYS[1], '0') return 1 end
return 0
"""


def _keys(project: str):
    """[queued, running, rerun, new_annotations] of the project with key `project`."""
    return [keys.project(project, "train:queued"), keys.project(project, "train:running"),
            keys.project(project, "train:rerun"), keys.project(project, "new_annotations")]


def new_job_id(project: str) -> str:
    return f"finetune-{project}-{uuid.uuid4().hex[:10]}"


def count_annotation(state: redis.Redis, project: str, every_n: int) -> bool:
    """Count one new/updated annotation; True when it completes a batch of `every_n` (0 = never)."""
    return bool(state.eval(_COUNT, 1, _keys(project)[3], int(every_n)))


def request_finetune(state: redis.Redis, project: str, enqueue: Callable[[str], None],
                     job_state: Callable[[str], object], queued_ttl_s: int = 7 * 24 * 3600) -> str:
    """Ask for a fine-tune of the project with key `project`. `enqueue(job_id)` puts the job on the train queue;
    `job_state(job_id)` tells whether RQ still has that job queued or running on a living worker: LIVE, DEAD or
    UNDECIDED (jobs.liveness), or a bool (alive or not). A marker whose job is DEAD (e.g. after a crash between
    the marker and the enqueue, or a job whose worker was killed) is cleared and the request retried once; one
    whose job is UNDECIDED gives UNDECIDED (the caller re-checks later: see trigger())."""
    keys = _keys(project)
    for _ in range(2):
        job_id = new_job_id(project)
        outcome = state.eval(_REQUEST, 3, *keys[:3], job_id, queued_ttl_s)
        if outcome == "enqueue":
            try:
                enqueue(job_id)
            except Exception:
                state.delete(keys[0])
                raise
            return ENQUEUE
        # a stale marker: the job it names is gone, or its worker died (SIGKILL, OOM) and will never finish it
        stale_key = {ALREADY_QUEUED: keys[0], RERUN_REQUESTED: keys[1]}.get(outcome)
        if stale_key is not None:
            marked = state.get(stale_key)
            verdict = _verdict(job_state(marked)) if marked else LIVE
            if verdict == UNDECIDED:
                return UNDECIDED
            if verdict == DEAD:
                state.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end", 1,
                           stale_key, marked)
                continue
        return outcome
    return outcome


def _verdict(value) -> str:
    if isinstance(value, bool):
        return LIVE if value else DEAD
    return str(value)


def trigger(rq_conn: redis.Redis, state: redis.Redis, settings, project: ProjectRef) -> str:
    """A fine-tune trigger (START_TRAINING, or a count of new annotations) for `project`: request_finetune
    against RQ, and when the running job's liveness is undecided, a re-check job on the train queue (at most
    one queued per project) that repeats the request once it can be decided. Never dropped."""
    outcome = request_finetune(state, project.key, lambda job_id: enqueue_finetune(rq_conn, settings, project, job_id),
                               lambda job_id: job_state_by_id(rq_conn, state, job_id))
    if outcome != UNDECIDED:
        return outcome
    if state.set(_recheck_key(project.key), "1", nx=True, ex=RECHECK_TTL_S):
        try:
            enqueue_recheck(rq_conn, project)
        except Exception:
            state.delete(_recheck_key(project.key))
            raise
    return RECHECK_SCHEDULED


def recheck(rq_conn: redis.Redis, state: redis.Redis, settings, project: ProjectRef, poll_s: float = 1.0,
            max_wait_s: float = WORKER_ALIVE_TTL_S + WORKER_MISSING_GRACE_S + 30) -> str:
    """The re-check job's work: repeat the request until the marked job is judged (at most `max_wait_s`: after
    that a job still undecided is one whose worker keeps its key fresh, i.e. alive)."""
    state.delete(_recheck_key(project.key))
    deadline = time.monotonic() + max_wait_s
    while True:
        outcome = request_finetune(state, project.key,
                                   lambda job_id: enqueue_finetune(rq_conn, settings, project, job_id),
                                   lambda job_id: job_state_by_id(rq_conn, state, job_id))
        if outcome != UNDECIDED or time.monotonic() >= deadline:
            return outcome
        time.sleep(poll_s)


def _recheck_key(project: str) -> str:
    return keys.project(project, "train:recheck")


def start_finetune(state: redis.Redis, project: str, job_id: str, running_ttl_s: int) -> bool:
    """Worker, when a fine-tune job starts. False if another job of the project is running (this one then
    only leaves a rerun request behind)."""
    return state.eval(_START, 4, *_keys(project), job_id, running_ttl_s) == "ok"


def finish_finetune(state: redis.Redis, project: str, job_id: str, queued_ttl_s: int = 7 * 24 * 3600):
    """Worker, when a fine-tune job ends (success or not). Returns the id of the successor job to enqueue
    when a rerun was requested meanwhile, else None."""
    successor = new_job_id(project)
    outcome = state.eval(_FINISH, 3, *_keys(project)[:3], job_id, successor, queued_ttl_s)
    return successor if outcome == "enqueue" else None


def status(state: redis.Redis, project: str) -> dict:
    queued, running, rerun, count = state.mget(_keys(project))
    return {"queued": queued, "running": running, "rerun_requested": bool(rerun), "new_annotations": int(count or 0)}
