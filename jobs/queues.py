"""The three RQ queues and the functions that put jobs on them.

Jobs are enqueued by dotted path (`workers.jobs.*`) with RQ's JSON serializer (no pickle): the web process
never imports the model code, and a job's arguments are plain JSON that any worker version can read.
"""
from __future__ import annotations

from typing import List, Optional

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from labelstudio.identity import ProjectRef

INTERACTIVE, BATCH, TRAIN = "interactive", "batch", "train"
QUEUES = (INTERACTIVE, BATCH, TRAIN)  # worker priority order

RESULT_TTL_S = 600  # RQ's own result record: only for inspection, results travel through the hand-off key
BATCH_JOB_TIMEOUT_S = 1800
INTERACTIVE_JOB_TIMEOUT_S = 120

JOB_PREDICT_TASKS = "workers.jobs.predict_tasks"
JOB_PREDICT_INTERACTIVE = "workers.jobs.predict_interactive"
JOB_FINETUNE = "workers.jobs.finetune_project"
JOB_RECHECK_FINETUNE = "workers.jobs.recheck_finetune"
RECHECK_JOB_TIMEOUT_S = 300


def get_queue(conn: redis.Redis, name: str) -> Queue:
    if name not in QUEUES:
        raise ValueError(f"unknown queue {name!r}; queues: {', '.join(QUEUES)}")
    return Queue(name, connection=conn, serializer=JSONSerializer)


def enqueue_predict(rq_conn: redis.Redis, queue_name: str, job_id: str, *, project: ProjectRef, config: dict,
                    tasks: List[dict], request_id: str, late: str, stale_after_s: Optional[int] = None) -> None:
    """One prediction job: `tasks` ([{"id", "image", "expression"}]) of `project` on the `interactive` or `batch`
    queue. Its results go to the hand-off key (jobs.handoff); `late` says what the worker does when /predict
    has stopped waiting ("post" to Label Studio, or "drop"). An interactive job nobody picked up within
    `stale_after_s` is useless and dropped by RQ. The job carries the project's identity (id, creation stamp,
    Label Studio instance): a worker of another Label Studio refuses it, and a late result whose project was
    re-created meanwhile is not posted (workers/jobs.py)."""
    interactive = queue_name == INTERACTIVE
    get_queue(rq_conn, queue_name).enqueue_call(
        JOB_PREDICT_INTERACTIVE if interactive else JOB_PREDICT_TASKS,
        kwargs={"project": project.to_dict(), "config": config, "tasks": tasks, "request_id": request_id,
                "late": late},
        job_id=job_id,
        timeout=INTERACTIVE_JOB_TIMEOUT_S if interactive else BATCH_JOB_TIMEOUT_S,
        ttl=stale_after_s,
        result_ttl=RESULT_TTL_S,
        failure_ttl=24 * 3600,
        description=f"{queue_name} predict project {project.id}: {len(tasks)} task(s)",
    )


def enqueue_finetune(rq_conn: redis.Redis, settings, project: ProjectRef, job_id: str) -> None:
    """Put a fine-tune job on the train queue (callers go through jobs.finetune_state for deduplication)."""
    get_queue(rq_conn, TRAIN).enqueue_call(
        JOB_FINETUNE, kwargs={"project": project.to_dict()}, job_id=job_id, timeout=settings.finetune_timeout_s,
        result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600, description=f"fine-tune project {project.id}")


def enqueue_recheck(rq_conn: redis.Redis, project: ProjectRef) -> None:
    """A "check, then train" job on the train queue (jobs.finetune_state.trigger)."""
    get_queue(rq_conn, TRAIN).enqueue_call(
        JOB_RECHECK_FINETUNE, kwargs={"project": project.to_dict()}, timeout=RECHECK_JOB_TIMEOUT_S,
        result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600, description=f"re-check fine-tune of project {project.id}")
