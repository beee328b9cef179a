"""Worker liveness: is the worker running a job still alive?

Every worker refreshes `refseg:worker:<name>:alive` (TTL WORKER_ALIVE_TTL_S) from a thread. RQ only notices a
SIGKILLed SimpleWorker's job when its registry entry expires (job timeout + 60 s: 31 minutes for a batch job);
/predict and the fine-tune triggers check this key instead, so a task whose worker died is predicted again soon.
"""
from __future__ import annotations

import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from . import keys

WORKER_ALIVE_TTL_S = 15
WORKER_ALIVE_EVERY_S = 3.0
# A missing key is only believed once it has stayed missing this long: after a Redis outage longer than the TTL
# (or a restart from an AOF file) every key is gone until each worker's next refresh, and living workers must not
# be declared dead in that window. The first sighting is kept in Redis (server clock), so every backend process
# and host agrees on it.
WORKER_MISSING_GRACE_S = 2 * WORKER_ALIVE_EVERY_S + 2

# RQ statuses of a job that may still finish
ALIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
# what is known of a worker (or of the job it runs): alive, dead, or missing for less than the grace (undecided:
# ask again later, never treat as either)
LIVE, DEAD, UNDECIDED = "live", "dead", "undecided"

worker_alive_key = keys.worker_alive
worker_missing_key = keys.worker_missing


def refresh_worker_alive(state: redis.Redis, name: str, value: str) -> None:
    """Worker side: mark `name` alive (and forget an earlier sighting of its key missing)."""
    pipe = state.pipeline(transaction=False)
    pipe.set(worker_alive_key(name), value, ex=WORKER_ALIVE_TTL_S)
    pipe.delete(worker_missing_key(name))
    pipe.execute()


# KEYS: alive key, missing-since key; ARGV: grace seconds, expiry of the missing-since key. One atomic call: the
# first backend process to see the key missing records the time (server clock), and everyone judges from that.
_WORKER_ALIVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
redis.call('SET', KEYS[2], string.format('%.6f', now), 'NX', 'EX', ARGV[2])
if now - tonumber(redis.call('GET', KEYS[2])) < tonumber(ARGV[1]) then return 1 end
return 0
"""
_STATES = {2: LIVE, 1: UNDECIDED, 0: DEAD}


def worker_state(state: redis.Redis, name: str, grace_s: float = WORKER_MISSING_GRACE_S) -> str:
    """LIVE (its liveness key exists), UNDECIDED (missing for less than `grace_s`, counted from the first time a
    backend process saw it missing) or DEAD."""
    expiry = int(grace_s) + WORKER_ALIVE_TTL_S + 60
    return _STATES[int(state.eval(_WORKER_ALIVE, 2, worker_alive_key(name), worker_missing_key(name), grace_s,
                                  expiry))]


def worker_alive(state: redis.Redis, name: str, grace_s: float = WORKER_MISSING_GRACE_S) -> bool:
    """Whether worker `name` may still be alive (LIVE or UNDECIDED)."""
    return worker_state(state, name, grace_s) != DEAD


def job_state(state: redis.Redis, job, alive_statuses=ALIVE) -> str:
    """Whether an RQ job (or None) may still finish: LIVE when queued/deferred/scheduled or started by a living
    worker, UNDECIDED while its worker's key has been missing for less than the grace, else DEAD. A started job
    whose worker name is unknown counts as LIVE (no evidence it died)."""
    if job is None:
        return DEAD
    status = job.get_status(refresh=False)
    if status not in alive_statuses:
        return DEAD
    if status == JobStatus.STARTED and getattr(job, "worker_name", None):
        return worker_state(state, job.worker_name)
    return LIVE


def job_alive(state: redis.Redis, job, alive_statuses=ALIVE) -> bool:
    """Whether an RQ job may still finish (LIVE or UNDECIDED, see job_state)."""
    return job_state(state, job, alive_statuses) != DEAD


def job_state_by_id(rq_conn: redis.Redis, state: redis.Redis, job_id: str) -> str:
    """job_state of the job with id `job_id` (DEAD when RQ no longer has it)."""
    job = Job.fetch_many([job_id], connection=rq_conn, serializer=JSONSerializer)[0]
    return job_state(state, job)
