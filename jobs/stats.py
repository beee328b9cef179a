"""Counters and job-latency histograms that workers write to Redis and /metrics reads.

Why Redis and not prometheus_client in the workers: workers are separate processes on other machines with no
HTTP port; the web process is the one Prometheus scrapes, and it reads these at scrape time.
"""
from __future__ import annotations

import json
from typing import Dict

import redis

from . import keys

JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 7200.0)
_JOBS = keys.STATS_JOBS_PREFIX  # + kind -> hash {count, sum, failed, le:<bucket>}
_COUNTERS = keys.STATS_COUNTERS  # hash name -> int
_FINETUNE = keys.STATS_FINETUNE_PREFIX  # + project -> hash of the last run's numbers


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
