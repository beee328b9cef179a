"""The hand-off of batch results between /predict and the workers, and the late-delivery markers.

Why: Label Studio cuts /predict at 100 s; a big batch must answer before that and deliver the rest later.
Each batch job, when done, tries `SET refseg:handoff:<job> <results> NX`; the web process, when its budget is
spent, tries `SET refseg:handoff:<job> late NX` for every job it is still waiting on. Exactly one of the two
wins, so each task's prediction is delivered exactly once: in the /predict response, or by the worker with
`POST /api/predictions` (see workers/jobs.py).
"""
from __future__ import annotations

import json
from typing import Optional

import redis

from . import keys

LATE = "late"
HANDOFF_TTL_S = 24 * 3600
DONE_TTL_S = 3600
PENDING_TTL_S = 6 * 3600
# After a worker posts a late prediction, its task's pending marker says "posted" for a while: an LS request
# built before the post landed would otherwise predict (and store) the task a second time.
POSTED = "posted"  # marker value "posted:<model version>": delivered late under that version
POSTED_GRACE_S = 120

handoff_key = keys.handoff
done_key = keys.done
pending_key = keys.pending


def posted_marker(version: str) -> str:
    return f"{POSTED}:{version}"


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
