"""What the status page shows (/status, and /status.json for scripts), read from Redis and RQ only.

One snapshot, built per request: workers (RQ's registrations + our liveness keys, and the job each is running),
queue depths, per project the serving version, its lineage, the fine-tune outcomes (promoted and rejected
candidates with their held-out gIoU), the running fine-tune's progress, and the last failures with their reasons
(RQ's failed-job registries + failed fine-tunes). Reading never changes anything: RQ's registry clean-ups (which
move jobs between registries) are left to the workers.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Dict, List, Optional

import redis
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer

from jobs import finetune_state, keys, stats
from jobs.queues import QUEUES, get_queue
from jobs.versions import VersionStore
from labelstudio.identity import ProjectRef

FAILURES_SHOWN = 20  # the newest, all queues and fine-tunes together
FAILED_JOBS_READ_PER_QUEUE = 50
OUTCOMES_SHOWN = 20  # per project
RUNNING_STATES = ("running", "training")  # of the fine-tune status hash while a job works on the project
LAST_RUN_FIELDS = ("state", "job", "version", "step", "steps", "loss", "seconds")  # of that hash, in the JSON


def iso(ts) -> Optional[str]:
    """A timestamp (epoch seconds or datetime; naive = UTC) as ISO-8601 UTC, or None."""
    if ts is None or ts == "":
        return None
    if isinstance(ts, datetime):
        dt = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    else:
        try:
            dt = datetime.fromtimestamp(float(ts), timezone.utc)
        except (TypeError, ValueError, OverflowError, OSError):
            return None
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(ts) -> Optional[float]:
    if isinstance(ts, datetime):
        return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()
    try:
        return float(ts)
    except (TypeError, ValueError):
        return None


def _iso_z(text) -> Optional[float]:
    """Epoch of an ISO string we wrote ("...Z"), for sorting."""
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def reason_of(exc_string: Optional[str]) -> Optional[str]:
    """The line of a traceback that says what went wrong (its last non-empty line)."""
    if not exc_string:
        return None
    lines = [line.strip() for line in str(exc_string).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


class StatusReader:
    def __init__(self, rq_conn: redis.Redis, state: redis.Redis, versions: VersionStore) -> None:
        self.rq_conn, self.state, self.versions = rq_conn, state, versions

    # ------------------------------------------------------------------------------------------------ snapshot
    def snapshot(self) -> dict:
        now = time.time()
        workers = self.workers()
        projects = self.projects()
        return {
            "generated_at": iso(now),
            "base_model": {"version": self.versions.base.version},
            "workers": workers,
            "queues": self.queues(),
            "projects": projects,
            "failures": self.failures(projects),
        }

    # ------------------------------------------------------------------------------------------------- workers
    def _fetch(self, job_id: Optional[str]) -> Optional[Job]:
        if not job_id:
            return None
        try:
            return Job.fetch(job_id, connection=self.rq_conn, serializer=JSONSerializer)
        except (NoSuchJobError, ValueError):
            return None

    def _alive_names(self) -> set:
        prefix, suffix = keys.worker_alive("\0").split("\0")
        return {k[len(prefix):-len(suffix)] for k in self.state.scan_iter(keys.worker_alive("*"))}

    def workers(self) -> List[dict]:
        """RQ's registered workers, each with `alive`: whether our liveness key exists (a SIGKILLed worker stays
        registered in RQ for minutes; its liveness key is gone WORKER_ALIVE_TTL_S after the death)."""
        alive = self._alive_names()
        out = []
        for w in sorted(Worker.all(connection=self.rq_conn, serializer=JSONSerializer), key=lambda w: w.name):
            job = self._fetch(w.get_current_job_id())
            current = None
            if job is not None:
                started = epoch(job.started_at)
                current = {"id": job.id, "description": job.description, "queue": job.origin,
                           "started_at": iso(job.started_at),
                           "running_s": None if started is None else round(max(0.0, time.time() - started), 1)}
            out.append({
                "name": w.name, "state": w.get_state(), "queues": w.queue_names(), "alive": w.name in alive,
                "hostname": w.hostname, "pid": w.pid, "birth": iso(w.birth_date),
                "last_heartbeat": iso(w.last_heartbeat), "successful_jobs": w.successful_job_count,
                "failed_jobs": w.failed_job_count, "current_job": current,
            })
        return out

    # -------------------------------------------------------------------------------------------------- queues
    def queues(self) -> List[dict]:
        out = []
        for name in QUEUES:
            q = get_queue(self.rq_conn, name)
            out.append({
                "name": name, "queued": q.count,
                "started": StartedJobRegistry(queue=q).get_job_count(cleanup=False),
                "failed": FailedJobRegistry(queue=q).get_job_count(cleanup=False),
                "workers": Worker.count(queue=q),
            })
        return out

    # ------------------------------------------------------------------------------------------------ projects
    def _project_ids(self) -> List[str]:
        found = set(self.versions.projects()) | set(stats.finetune_projects(self.state))
        for what in ("train:queued", "train:running"):
            prefix, suffix = keys.project("\0", what).split("\0")
            found.update(k[len(prefix):-len(suffix)] for k in self.state.scan_iter(keys.project("*", what)))
        return sorted(found, key=lambda p: (len(p), p))

    def projects(self) -> List[dict]:
        last_runs = stats.finetune_status(self.state)
        return [self.project(p, last_runs.get(p, {})) for p in self._project_ids()]

    def project(self, project: str, last_run: Optional[dict] = None) -> dict:
        current = self.versions.current(project)
        history = list(reversed(self.versions.history(project)))  # oldest first
        lineage = [{"version": self.versions.base.version, "parent": None, "promoted_at": None, "giou": None,
                    "base": True}]
        for h in history:
            m = h.get("metrics") or {}
            lineage.append({"version": h.get("version"), "parent": h.get("parent"), "promoted_at": h.get("promoted_at"),
                            "giou": m.get("gIoU"), "giou_parent": m.get("gIoU_parent"), "samples": m.get("samples"),
                            "base": False})
        for entry in lineage:
            entry["serving"] = entry["version"] == current.version
        serving = next((e for e in reversed(lineage) if e["serving"]), None)

        outcomes = stats.finetune_outcomes(self.state, project, OUTCOMES_SHOWN)
        for o in outcomes:
            o["finished_at"] = iso(o.get("finished_at"))
        markers = finetune_state.status(self.state, project)
        last_run = dict(last_run or {})
        running = None
        if markers["running"] and last_run.get("state") in RUNNING_STATES and last_run.get("job") == markers["running"]:
            job = self._fetch(markers["running"])
            worker = job.worker_name if job is not None else None
            running = {
                "job": markers["running"], "state": last_run.get("state"), "version": last_run.get("version")
                if last_run.get("state") == "training" else None,
                "started_at": iso(last_run.get("started")), "step": last_run.get("step"),
                "steps": last_run.get("steps"), "loss": last_run.get("loss"),
                "progress_at": iso(last_run.get("progress_at")), "worker": worker,
                "worker_alive": None if not worker else bool(self.state.exists(keys.worker_alive(worker))),
            }
        ref = _ref(project)
        return {
            "key": project,  # the state's key in Redis and MODEL_DIR: one project of one Label Studio, in one life
            "id": ref.id if ref else project,  # Label Studio's project id
            "created": iso(int(ref.created)) if ref and ref.created.isdigit() else None,  # in Label Studio
            "serving": {"version": current.version, "base": current.version == self.versions.base.version,
                        "promoted_at": serving["promoted_at"] if serving else None,
                        "giou": serving["giou"] if serving else None},
            "lineage": lineage,
            "finetune": {"running": running, "queued": markers["queued"], "rerun_requested": markers["rerun_requested"],
                         "new_annotations": markers["new_annotations"],
                         "last_run": {k: last_run.get(k) for k in LAST_RUN_FIELDS} if last_run else None},
            "outcomes": outcomes,  # newest first
        }

    # ------------------------------------------------------------------------------------------------ failures
    def failures(self, projects: Optional[List[dict]] = None) -> List[dict]:
        out: Dict[str, dict] = {}
        for name in QUEUES:
            q = get_queue(self.rq_conn, name)
            ids = FailedJobRegistry(queue=q).get_job_ids(-FAILED_JOBS_READ_PER_QUEUE, -1, cleanup=False)
            for job in Job.fetch_many(ids, connection=self.rq_conn, serializer=JSONSerializer):
                if job is None:
                    continue
                try:
                    result = job.latest_result()
                except Exception:  # a result we cannot read must not break the page
                    result = None
                exc = result.exc_string if result is not None and result.type == Result.Type.FAILED else None
                when = job.ended_at or (result.created_at if result is not None else None)
                out[job.id] = {"source": "queue", "queue": name, "job": job.id, "project": None,
                               "description": job.description, "failed_at": iso(when),
                               "reason": reason_of(exc) or "no reason recorded (the worker may have died)"}
        for p in projects if projects is not None else self.projects():
            for o in p["outcomes"]:
                if o.get("status") != "failed":
                    continue
                job_id = o.get("job") or f"finetune-{p['id']}-{o.get('finished_at')}"
                entry = out.setdefault(job_id, {"source": "fine-tune", "queue": "train", "job": job_id,
                                                "description": f"fine-tune project {p['id']}",
                                                "failed_at": o.get("finished_at")})
                entry.update(project=p["id"], reason=o.get("reason") or entry.get("reason"), source="fine-tune")
        return sorted(out.values(), key=lambda f: _iso_z(f.get("failed_at")) or 0.0, reverse=True)[:FAILURES_SHOWN]


def _ref(key: str) -> Optional[ProjectRef]:
    """The project a state key names (jobs/projects.py keys state by ProjectRef.key); None for another form."""
    try:
        return ProjectRef.from_key(key)
    except ValueError:
        return None
