"""Prometheus metrics of the web process (/metrics).

Request counts and /predict wait times are measured here; queue depths, worker counts, job latencies, model
versions and fine-tune runs are read from Redis at scrape time (workers write them; see jobs/stats.py).
Run gunicorn with one process and several threads (the handlers mostly wait on Redis), so the in-process
counters cover every request.
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from rq import Worker

from jobs import finetune_state, stats
from jobs.queues import QUEUES, get_queue
from jobs.versions import VersionStore

log = logging.getLogger(__name__)


class RedisCollector:
    def __init__(self, rq_conn, state, versions: VersionStore) -> None:
        self.rq_conn, self.state, self.versions = rq_conn, state, versions

    def collect(self):
        up = GaugeMetricFamily("refseg_redis_up", "1 if Redis answered this scrape")
        try:
            families = list(self._collect())
        except Exception as exc:  # a scrape must not fail because Redis is down
            log.warning("metrics: Redis unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _collect(self):
        depth = GaugeMetricFamily("refseg_queue_depth", "Jobs waiting per queue", labels=["queue"])
        workers = GaugeMetricFamily("refseg_workers", "Workers listening per queue", labels=["queue"])
        for name in QUEUES:
            q = get_queue(self.rq_conn, name)
            depth.add_metric([name], q.count)
            workers.add_metric([name], Worker.count(queue=q))
        yield depth
        yield workers

        jobs = HistogramMetricFamily("refseg_job_seconds", "Worker job run time", labels=["kind"])
        failed = CounterMetricFamily("refseg_jobs_failed", "Worker jobs that failed", labels=["kind"])
        for kind, s in sorted(stats.job_stats(self.state).items()):
            buckets = [(str(b), n) for b, n in s["buckets"]] + [("+Inf", s["count"])]
            jobs.add_metric([kind], buckets, s["sum"])
            failed.add_metric([kind], s["failed"])
        yield jobs
        yield failed

        info = GaugeMetricFamily("refseg_model_version_info", "Current model version per project (value 1)",
                                 labels=["project", "version"])
        info.add_metric(["base", self.versions.base.version], 1)
        running = GaugeMetricFamily("refseg_finetune_running", "1 while a fine-tune job runs", labels=["project"])
        for p in self.versions.projects():
            info.add_metric([p, self.versions.current(p).version], 1)
        ft = stats.finetune_status(self.state)
        for p in sorted(set(ft) | set(self.versions.projects())):
            running.add_metric([p], 1 if finetune_state.status(self.state, p)["running"] else 0)
        yield info
        yield running

        last = GaugeMetricFamily("refseg_finetune_last_giou", "gIoU on held-out annotations at the last fine-tune",
                                 labels=["project", "model"])
        for p, d in sorted(ft.items()):
            for model in ("new", "current"):
                if isinstance(d.get(f"giou_{model}"), (int, float)):
                    last.add_metric([p, model], d[f"giou_{model}"])
        yield last

        counters = stats.counters(self.state)
        runs = CounterMetricFamily("refseg_finetune_runs", "Fine-tune runs by outcome", labels=["outcome"])
        late = CounterMetricFamily("refseg_late_predictions", "Batch predictions delivered after /predict returned",
                                   labels=["outcome"])
        for name, value in sorted(counters.items()):
            kind, _, outcome = name.partition(":")
            if kind == "finetune":
                runs.add_metric([outcome], value)
            elif kind == "late":
                late.add_metric([outcome], value)
        yield runs
        yield late


class Metrics:
    """One registry per app (tests build several apps in one process)."""

    def __init__(self, rq_conn, state, versions: VersionStore) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("refseg_http_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.predict_seconds = Histogram(
            "refseg_predict_seconds", "Time /predict spent waiting for workers", ["kind"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 50, 100),
        )
        self.tasks = Counter("refseg_predict_tasks", "Tasks answered by /predict, by outcome", ["outcome"],
                             registry=self.registry)
        self.registry.register(RedisCollector(rq_conn, state, versions))
