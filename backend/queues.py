"""Redis connections, the three RQ queues, and the hand-off of batch results between /predict and the workers.

Jobs are enqueued by dotted path (`workers.jobs.*`) with RQ's JSON serializer (no pickle): the web process
never imports the model code, and a job's arguments are plain JSON that any worker version can read.

Hand-off (why: LS cuts /predict at 100 s; a big batch must answer before that and deliver the rest later):
each batch job, when done, tries `SET refseg:handoff:<job> <results> NX`; the web process, when its budget is
spent, tries `SET refseg:handoff:<job> late NX` for every job it is still waiting on. Exactly one of the two
wins, so each task's prediction is delivered exactly once: in the /predict response, or by the worker with
`POST /api/predictions` (see workers/jobs.py).
"""
from __future__ import annotations

import json
from typing import Optional

import redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

INTERACTIVE, BATCH, TRAIN = "interactive", "batch", "train"
QUEUES = (INTERACTIVE, BATCH, TRAIN)  # worker priority order

LATE = "late"
HANDOFF_TTL_S = 24 * 3600
DONE_TTL_S = 3600
PENDING_TTL_S = 6 * 3600
# After a worker posts a late prediction, its task's pending marker says "posted" for a while: an LS request
# built before the post landed would otherwise predict (and store) the task a second time.
POSTED = "posted"  # marker value "posted:<model version>": delivered late under that version
POSTED_GRACE_S = 120
RESULT_TTL_S = 600  # RQ's own result record: only for inspection, results travel through the hand-off key

JOB_PREDICT_TASKS = "workers.jobs.predict_tasks"
JOB_PREDICT_INTERACTIVE = "workers.jobs.predict_interactive"
JOB_FINETUNE = "workers.jobs.finetune_project"


def posted_marker(version: str) -> str:
    return f"{POSTED}:{version}"


def rq_connection(url: str) -> redis.Redis:
    """Connection for RQ (bytes responses, as RQ requires)."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=30)


def state_connection(url: str) -> redis.Redis:
    """Connection for the backend's own keys (str responses)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, health_check_interval=30)


# Worker liveness: every worker refreshes `refseg:worker:<name>:alive` (TTL WORKER_ALIVE_TTL_S) from a thread. RQ
# only notices a SIGKILLed SimpleWorker's job when its registry entry expires (job timeout + 60 s: 31 minutes for
# a batch job); /predict checks this key instead, so a task whose worker died is predicted again soon.
WORKER_ALIVE_TTL_S = 15
WORKER_ALIVE_EVERY_S = 3.0
# A missing key is only believed once it has stayed missing this long: after a Redis outage longer than the TTL
# (or a restart from an AOF file) every key is gone until each worker's next refresh, and living workers must not
# be declared dead in that window. The first sighting is kept in Redis (server clock), so every backend process
# and host agrees on it.
WORKER_MISSING_GRACE_S = 2 * WORKER_ALIVE_EVERY_S + 2


def worker_alive_key(name: str) -> str:
    return f"refseg:worker:{name}:alive"


def worker_missing_key(name: str) -> str:
    return f"refseg:worker:{name}:missing_since"


def refresh_worker_alive(state: redis.Redis, name: str, value: str) -> None:
    """Worker side: mark `name` alive (and forget an earlier sighting of its key missing)."""
    pipe = state.pipeline(transaction=False)
    pipe.set(worker_alive_key(name), value, ex=WORKER_ALIVE_TTL_S)
    pipe.delete(worker_missing_key(name))
    pipe.execute()


# KEYS: alive key, missing-since key; ARGV: grace seconds, expiry of the missing-since key. One atomic call: the
# first backend process to see the key missing records the time (server clock), and everyone judges from that.
_WORKER_ALIVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('SET', KEYS[2], string.format('%.6f', now), 'NX', 'EX', ARGV[2])
if now - tonumber(redis.call('GET', KEYS[2])) < tonumber(ARGV[1]) then return 1 end
return 0
"""


def worker_alive(state: redis.Redis, name: str, grace_s: float = WORKER_MISSING_GRACE_S) -> bool:
    """Whether worker `name` may still be alive: its liveness key exists, or has been missing for less than
    `grace_s` (seconds since a backend process first saw it missing)."""
    expiry = int(grace_s) + WORKER_ALIVE_TTL_S + 60
    return state.eval(_WORKER_ALIVE, 2, worker_alive_key(name), worker_missing_key(name), grace_s, expiry) == 1


def job_alive(state: redis.Redis, job, alive_statuses) -> bool:
    """Whether an RQ job (or None) may still finish: queued/deferred/scheduled, or started by a living worker.
    A started job whose worker name is unknown counts as alive (no evidence it died)."""
    if job is None:
        return False
    status = job.get_status(refresh=False)
    if status not in alive_statuses:
        return False
    if status == JobStatus.STARTED and getattr(job, "worker_name", None):
        return worker_alive(state, job.worker_name)
    return True


def get_queue(conn: redis.Redis, name: str) -> Queue:
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}; queues: {', '.join(QUEUES)}")
    return Queue(name, connection=conn, serializer=JSONSerializer)


# ---------------------------------------------------------------------------------------------- hand-off keys
def handoff_key(job_id: str) -> str:
    return f"refseg:handoff:{job_id}"


def done_key(request_id: str) -> str:
    return f"refseg:done:{request_id}"


def pending_key(project: str, task_id) -> str:
    return f"refseg:pending:{project}:{task_id}"


def deliver(state: redis.Redis, job_id: str, request_id: Optional[str], results: list) -> bool:
    """Worker side: offer `results` to the waiting /predict. False if /predict already gave up (the worker
    must then deliver them itself)."""
    won = state.set(handoff_key(job_id), json.dumps(results), nx=True, ex=HANDOFF_TTL_S)
    if won and request_id:
        pipe = state.pipeline()
        pipe.rpush(done_key(request_id), job_id)
        pipe.expire(done_key(request_id), DONE_TTL_S)
        pipe.execute()
    return bool(won)


def give_up(state: redis.Redis, job_id: str) -> Optional[list]:
    """Web side: stop waiting for `job_id`. Returns its results if the worker delivered them just before, else
    None (the worker now owns delivery)."""
    if state.set(handoff_key(job_id), LATE, nx=True, ex=HANDOFF_TTL_S):
        return None
    return take(state, job_id)


def take(state: redis.Redis, job_id: str) -> Optional[list]:
    """Web side: the results a worker delivered for `job_id` (None if none, or if handed over as late)."""
    raw = state.get(handoff_key(job_id))
    if raw is None or raw == LATE:
        return None
    state.delete(handoff_key(job_id))
    return json.loads(raw)


def enqueue_finetune(rq_conn: redis.Redis, settings, project: str, job_id: str) -> None:
    """Put a fine-tune job on the train queue (callers go through backend.training for deduplication)."""
    get_queue(rq_conn, TRAIN).enqueue_call(
        JOB_FINETUNE, kwargs={"project": project}, job_id=job_id, timeout=settings.finetune_timeout_s,
        result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600, description=f"fine-tune project {project}")
