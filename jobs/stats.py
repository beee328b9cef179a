"""Counters and job-latency histograms that workers write to Redis and /metrics reads.

Why Redis and not prometheus_client in the workers: workers are separate processes on other machines with no
HTTP port; the web process is the one Prometheus scrapes, and it reads these at scrape time.
"""
from __future__ import annotations

import json
import time
from typing import Dict, List, Optional

import redis

from . import keys

JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0)
_JOBS = keys.STATS_JOBS_PREFIX  # + kind -> hash {count, sum, failed, le:<bucket>}
_COUNTERS = keys.STATS_COUNTERS  # hash name -> int
_FINETUNE = keys.STATS_FINETUNE_PREFIX  # + project -> hash of the last run's numbers
_FINETUNE_RUNS = keys.STATS_FINETUNE_RUNS_PREFIX  # + project -> list of outcomes, newest first
FINETUNE_RUNS_KEPT = 50  # per project: enough for the status page's plot and table
FINETUNE_OUTCOMES = ("promoted", "rejected", "failed", "skipped")


def record_job(conn: redis.Redis, kind: str, seconds: float, ok: bool) -> None:
    key = _JOBS + kind
    pipe = conn.pipeline()
    pipe.hincrby(key, "count", 1)
    pipe.hincrbyfloat(key, "sum", float(seconds))
    if not ok:
        pipe.hincrby(key, "failed", 1)
    for b in JOB_BUCKETS:
        if seconds <= b:
            pipe.hincrby(key, f"le:{b}", 1)
    pipe.execute()


def job_stats(conn: redis.Redis) -> Dict[str, dict]:
    out = {}
    for key in conn.scan_iter(_JOBS + "*"):
        d = conn.hgetall(key)
        out[key[len(_JOBS):]] = {
            "count": int(d.get("count", 0)),
            "sum": float(d.get("sum", 0.0)),
            "failed": int(d.get("failed", 0)),
            "buckets": [(b, int(d.get(f"le:{b}", 0))) for b in JOB_BUCKETS],
        }
    return out


def incr(conn: redis.Redis, name: str, by: int = 1) -> None:
    conn.hincrby(_COUNTERS, name, by)


def counters(conn: redis.Redis) -> Dict[str, int]:
    return {k: int(v) for k, v in conn.hgetall(_COUNTERS).items()}


def set_finetune_status(conn: redis.Redis, project: str, **fields) -> None:
    conn.hset(_FINETUNE + project, mapping={k: json.dumps(v) for k, v in fields.items()})


def finetune_job(conn: redis.Redis, project: str):
    """The job id the last fine-tune status of `project` is about (None if none)."""
    raw = conn.hget(_FINETUNE + project, "job")
    return json.loads(raw) if raw else None


def finetune_status(conn: redis.Redis) -> Dict[str, dict]:
    out = {}
    for key in conn.scan_iter(_FINETUNE + "*"):
        out[key[len(_FINETUNE):]] = {k: json.loads(v) for k, v in conn.hgetall(key).items()}
    return out


def set_finetune_progress(conn: redis.Redis, project: str, step: int, steps: int, loss: Optional[float]) -> None:
    """The running fine-tune's progress, in the same hash as its state (the status page shows it)."""
    set_finetune_status(conn, project, step=int(step), steps=int(steps),
                        loss=None if loss is None else round(float(loss), 5), progress_at=round(time.time(), 3))


def record_finetune_outcome(conn: redis.Redis, project: str, *, status: str, version: Optional[str] = None,
                            giou_new: Optional[float] = None, giou_current: Optional[float] = None,
                            reason: Optional[str] = None, finished_at: Optional[float] = None, **extra) -> dict:
    """Append one finished fine-tune to the project's outcome list (newest first, the last FINETUNE_RUNS_KEPT):
    {version, status (promoted|rejected|failed|skipped), giou_new, giou_current, reason, finished_at, ...}.
    The last-run hash (set_finetune_status) only keeps the latest; this keeps the history the status page plots,
    rejected candidates included (they never reach the version lineage)."""
    if status not in FINETUNE_OUTCOMES:
        raise ValueError(f"unknown fine-tune outcome {status!r}; one of {', '.join(FINETUNE_OUTCOMES)}")
    entry = {"version": version, "status": status, "giou_new": giou_new, "giou_current": giou_current,
             "reason": reason, "finished_at": time.time() if finished_at is None else finished_at, **extra}
    key = _FINETUNE_RUNS + project
    pipe = conn.pipeline()
    pipe.lpush(key, json.dumps(entry))
    pipe.ltrim(key, 0, FINETUNE_RUNS_KEPT - 1)
    pipe.execute()
    return entry


def finetune_outcomes(conn: redis.Redis, project: str, limit: int = FINETUNE_RUNS_KEPT) -> List[dict]:
    """The project's last fine-tune outcomes, newest first."""
    out = []
    for raw in conn.lrange(_FINETUNE_RUNS + project, 0, max(0, limit - 1)):
        try:
            out.append(json.loads(raw))
        except ValueError:  # never written by us; skip rather than break the status page
            continue
    return out


def finetune_projects(conn: redis.Redis) -> List[str]:
    """Projects that have a fine-tune status or outcome list."""
    found = set()
    for prefix in (_FINETUNE, _FINETUNE_RUNS):
        found.update(key[len(prefix):] for key in conn.scan_iter(prefix + "*"))
    return sorted(found, key=lambda p: (len(p), p))
