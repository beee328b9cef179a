"""/predict: turn Label Studio's request into queue jobs, wait for them within a budget, answer in task order.

Label Studio drops the whole batch unless it gets exactly one result per task, in order; so every task gets
an entry: done, failed, or pending (formats in labelstudio/predictions.py). For a pending task the worker POSTs
the real prediction to /api/predictions when it finishes (see jobs/handoff.py for the hand-off).

Projects are `labelstudio.identity.ProjectRef`s: state is keyed by `project.key`, and the jobs carry the
identity so that no worker posts a result into another Label Studio or a re-created project.

Every task being predicted has a marker `refseg:pending:<project key>:<task>` (the request's claim, then the
job id, then "posted:<version>" for POSTED_GRACE_S after a late post, or for ANSWERED_GRACE_S after an inline
answer): if LS asks for it again meanwhile (a second "Retrieve predictions", or a request LS built before the
answer was stored), it gets the placeholder again and no second job, so each task ends with exactly one
prediction. A marker whose job died is dropped and the task predicted again.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs import typed_expressions
from jobs.handoff import PENDING_TTL_S, POSTED, done_key, give_up, pending_key, posted_marker, take
from jobs.liveness import ALIVE, job_alive
from jobs.queues import BATCH, INTERACTIVE, enqueue_predict
from labelstudio.identity import ProjectRef
from labelstudio.labelconfig import ProjectConfig, task_expression, textarea_text
from labelstudio.predictions import error_result, no_suggestion, pending_result, task_id
from labelstudio.prompts import parse_prompts

log = logging.getLogger(__name__)
CLAIM = "claim"  # marker value "claim:<request id>": a request is enqueueing the task's job
CLAIM_TTL_S = 60
# How long a task answered inline counts as just delivered (its marker says "posted:<version>", as after a late
# post). Label Studio's two threads that ask for a task at once (Data Manager list, task view) each check the
# database for a prediction first; the second can check before the first stores its answer and ask us after we
# sent it (seen in a fresh-clone run of the layout e2e: two predictions). Longer than LS takes from storing an
# answer to sending the other request (milliseconds, up to a busy SQLite write), shorter than an annotator takes
# to delete a prediction and retrieve it again through the UI.
ANSWERED_GRACE_S = 3
# delete a key only if it still holds the value read before (another request may have claimed it since)
_DELETE_IF_EQUAL = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
# replace a key's value (ARGV[2], EX ARGV[3]) only if it still holds ARGV[1]
_REPLACE_IF_EQUAL = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return 0
"""
# claim a task's marker (ARGV[1], EX ARGV[3]) if it is free or only says "posted" under another version than
# the current one (ARGV[2]); atomic, so of two requests at once exactly one wins
_CLAIM_TASK = """
local v = redis.call('get', KEYS[1])
if (not v) or (string.sub(v, 1, 7) == 'posted:' and v ~= ARGV[2]) then
  redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"""


@dataclass
class _Chunk:
    job_id: str
    indices: List[int]
    task_ids: list


class PredictService:
    def __init__(self, settings, rq_conn, state, versions, metrics) -> None:
        self.settings, self.rq_conn, self.state, self.versions, self.metrics = (
            settings, rq_conn, state, versions, metrics)

    # --------------------------------------------------------------------------------------------- batch
    def batch(self, project: ProjectRef, cfg: ProjectConfig, tasks: List[dict]) -> List[dict]:
        t0 = time.monotonic()
        deadline = t0 + self.settings.predict_budget_s
        version = self.versions.current(project.key).version
        out: List[Optional[dict]] = [None] * len(tasks)
        todo: List[Tuple[int, dict]] = []
        pending = self._pending_jobs(project, tasks, version)
        for i, task in enumerate(tasks):
            job_task, why = self._job_task(cfg, task)
            if job_task is None:
                out[i] = error_result(version, why)
            elif job_task["id"] in pending:
                # an earlier /predict's job answers it: that request or the job's late post delivers it
                out[i] = pending_result(version)
            else:
                todo.append((i, job_task))

        request_id = uuid.uuid4().hex
        # Label Studio asks for a task without a prediction from its Data Manager list and from the task view at
        # once, and stores every answer: each task is claimed atomically, and a request that loses the claim (or
        # comes while the winner's job runs) answers "pending", which LS does not store: one prediction, not two
        claimed = self._claim(project, [t["id"] for _, t in todo], request_id, version)
        for i, job_task in todo:
            if job_task["id"] is not None and job_task["id"] not in claimed:
                out[i] = pending_result(version)
        todo = [(i, t) for i, t in todo if out[i] is None]
        chunks = self._enqueue(project, cfg, todo, request_id, BATCH, late="post")
        self._mark_pending(project, chunks)  # the claims become the jobs' markers
        self._wait(chunks, request_id, deadline, out, version)
        for chunk in chunks:  # budget spent: the worker delivers these itself
            if all(out[i] is not None for i in chunk.indices):
                self._mark_answered(project, chunk, version)
                continue
            # the markers set at enqueue stay: a worker that then finds itself late overwrites them with posted_marker()
            keys = [pending_key(project.key, tid) for tid in chunk.task_ids if tid is not None]
            results = give_up(self.state, chunk.job_id)
            if results is not None:
                if keys:
                    self.state.delete(*keys)
                self._fill(out, chunk, results)
                continue
            for i in chunk.indices:
                out[i] = pending_result(version)
            log.info("project %s: %d task(s) of job %s handed over for late delivery", project,
                     len(chunk.indices), chunk.job_id)
        self._observe("batch", t0, out)
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------- interactive
    def nothing_to_suggest(self, project: ProjectRef, tasks: List[dict]) -> List[dict]:
        """An interactive request with an empty prompt (nothing typed, no click): the editor sends one right
        after Submit/Update. Answering it with the task's suggestion would offer a duplicate; no job runs."""
        version = self.versions.current(project.key).version
        return [no_suggestion(version) for _ in tasks]

    def interactive(self, project: ProjectRef, cfg: ProjectConfig, task: dict, context: dict) -> dict:
        t0 = time.monotonic()
        version = self.versions.current(project.key).version
        typed = self._typed_expression(project, cfg, task, context)
        job_task, why = self._job_task(cfg, task, context, typed)
        if job_task is None:
            out = [error_result(version, why)]
        else:
            out = [None]
            request_id = uuid.uuid4().hex
            chunks = self._enqueue(project, cfg, [(0, job_task)], request_id, INTERACTIVE, late="drop")
            self._wait(chunks, request_id, t0 + self.settings.interactive_timeout_s, out, version)
            if out[0] is None:
                results = give_up(self.state, chunks[0].job_id)
                if results is not None:
                    self._fill(out, chunks[0], results)
                else:
                    self._cancel(chunks[0].job_id)
                    out[0] = error_result(version, f"no result within {self.settings.interactive_timeout_s:g} s "
                                                   "(workers busy or none running)")
        self._observe("interactive", t0, out)
        return out[0]

    def _typed_expression(self, project: ProjectRef, cfg: ProjectConfig, task, context: dict) -> Optional[str]:
        """What the annotator typed for this task: in this request (remembered for the clicks that follow: the
        editor sends a click without the text), or in an earlier one; None when nothing was typed or the
        TextArea was cleared (then the task's own expression applies)."""
        tid = task_id(task) if isinstance(task, dict) else None
        if tid is None or not cfg.textarea_name:
            return None
        results = context.get("result") if isinstance(context.get("result"), list) else []
        typed = textarea_text(cfg, results)
        if typed:
            typed_expressions.remember(self.state, project.key, tid, typed)
            return typed
        if any(isinstance(r, dict) and r.get("type") == "textarea" for r in results):
            typed_expressions.forget(self.state, project.key, tid)
            return None
        return typed_expressions.recall(self.state, project.key, tid)

    # ------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _job_task(cfg: ProjectConfig, task, context=None, typed: Optional[str] = None) -> Tuple[Optional[dict], str]:
        if not isinstance(task, dict):
            return None, "task is not an object"
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        image = data.get(cfg.image_key)
        if not isinstance(image, str) or not image.strip():
            return None, f"task data has no image URL under {cfg.image_key!r}"
        expression = typed or task_expression(cfg, task, context)
        prompts = parse_prompts(cfg, context)  # clicks / box of the smart tools; PromptError -> 400
        if not expression and not prompts:
            where = [f"task data {cfg.text_key!r}"] if cfg.text_key else []
            if cfg.textarea_name:
                where.append(f"the {cfg.textarea_name!r} text area")
            if cfg.has_smart_tools:
                where.append("a click or box of the smart tools")
            return None, "no referring expression (expected in " + " or ".join(where) + ")"
        job = {"id": task_id(task), "image": image.strip(), "expression": expression or None}
        if prompts:
            job["prompts"] = prompts.to_json()
        return job, ""

    def _claim(self, project: ProjectRef, ids: list, request_id: str, version: str) -> set:
        """The task ids (of `ids`) that no other request holds, now held by this one (`claim:<request>`, for
        CLAIM_TTL_S: until `_mark_pending` replaces it, or a crash between the two lets it lapse). A delivery
        marker of an older version does not hold a task: after a promotion it is predicted by the new one."""
        unique = list(dict.fromkeys(tid for tid in ids if tid is not None))
        if not unique:
            return set()
        pipe = self.state.pipeline()
        for tid in unique:
            pipe.eval(_CLAIM_TASK, 1, pending_key(project.key, tid), f"{CLAIM}:{request_id}", posted_marker(version),
                      CLAIM_TTL_S)
        return {tid for tid, won in zip(unique, pipe.execute()) if won}

    def _mark_pending(self, project: ProjectRef, chunks: List[_Chunk]) -> None:
        pipe = self.state.pipeline()
        for chunk in chunks:
            for tid in chunk.task_ids:
                if tid is not None:
                    pipe.set(pending_key(project.key, tid), chunk.job_id, ex=PENDING_TTL_S)
        pipe.execute()

    def _mark_answered(self, project: ProjectRef, chunk: _Chunk, version: str) -> None:
        """Answered here: each of the chunk's markers (only if still this chunk's) says "posted" under `version`
        for ANSWERED_GRACE_S, so that Label Studio's second request built before it stored this answer gets
        "pending"; then it lapses and a later request, e.g. "Retrieve predictions" after the annotator deleted
        the prediction, predicts the task anew."""
        pipe = self.state.pipeline()
        for tid in chunk.task_ids:
            if tid is not None:
                pipe.eval(_REPLACE_IF_EQUAL, 1, pending_key(project.key, tid), chunk.job_id, posted_marker(version),
                          ANSWERED_GRACE_S)
        pipe.execute()

    def _pending_jobs(self, project: ProjectRef, tasks: List[dict], version: str) -> set:
        """Ids of tasks whose prediction an earlier /predict is still waiting for or handed to a still-living job
        for late delivery, or that such a job posted moments ago under the current `version` (a post under an
        older version does not count: after a promotion the task must get a prediction of the new one). Markers
        of jobs that died are removed (each only if it is still what was read): the task is predicted again."""
        ids = [task_id(t) for t in tasks if task_id(t) is not None]
        if not ids:
            return set()
        markers = {tid: job for tid, job in zip(ids, self.state.mget([pending_key(project.key, t) for t in ids]))
                   if job}
        if not markers:
            return set()
        held = {tid for tid, job in markers.items() if job == posted_marker(version) or job.startswith(CLAIM)}
        jobs_of = {tid: job for tid, job in markers.items() if not job.startswith((POSTED, CLAIM))}
        job_ids = sorted(set(jobs_of.values()))
        if not job_ids:
            return held
        jobs = Job.fetch_many(job_ids, connection=self.rq_conn, serializer=JSONSerializer)
        alive = {jid for jid, job in zip(job_ids, jobs) if job_alive(self.state, job, ALIVE)}
        dead = {tid: job for tid, job in jobs_of.items() if job not in alive}
        if dead:
            pipe = self.state.pipeline()
            for tid, job in dead.items():
                pipe.eval(_DELETE_IF_EQUAL, 1, pending_key(project.key, tid), job)
            pipe.execute()
        return held | {tid for tid, job in jobs_of.items() if job in alive}

    def _enqueue(self, project, cfg, todo, request_id, queue_name, late) -> List[_Chunk]:
        size = self.settings.batch_chunk_size if queue_name == BATCH else 1
        # a stale interactive job is useless: dropped if no worker picks it up in time
        stale_after_s = int(self.settings.interactive_timeout_s) + 5 if queue_name == INTERACTIVE else None
        chunks = []
        for k in range(0, len(todo), size):
            part = todo[k:k + size]
            job_id = f"predict-{request_id}-{k // size}"
            job_tasks = [t for _, t in part]
            enqueue_predict(self.rq_conn, queue_name, job_id, project=project, config=cfg.to_dict(), tasks=job_tasks,
                            request_id=request_id, late=late, stale_after_s=stale_after_s)
            chunks.append(_Chunk(job_id, [i for i, _ in part], [t["id"] for t in job_tasks]))
        return chunks

    def _wait(self, chunks: List[_Chunk], request_id: str, deadline: float, out: list, version: str) -> None:
        by_id: Dict[str, _Chunk] = {c.job_id: c for c in chunks}
        next_check = time.monotonic() + 1.0
        while by_id:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            item = self.state.blpop([done_key(request_id)], timeout=max(0.01, min(0.5, remaining)))
            if item is not None:
                chunk = by_id.pop(item[1], None)
                results = take(self.state, item[1]) if chunk else None
                if chunk is not None and results is not None:
                    self._fill(out, chunk, results)
            if time.monotonic() >= next_check:  # failed jobs never report: look for them once a second
                next_check = time.monotonic() + 1.0
                self._collect_failed(by_id, out, version)

    def _collect_failed(self, by_id: Dict[str, _Chunk], out: list, version: str) -> None:
        ids = list(by_id)
        for job_id, job in zip(ids, Job.fetch_many(ids, connection=self.rq_conn, serializer=JSONSerializer)):
            status = job.get_status(refresh=False) if job is not None else None
            if status == JobStatus.FINISHED or job_alive(self.state, job, ALIVE):
                continue  # FINISHED: its results are in the done list already
            chunk = by_id.pop(job_id)
            results = give_up(self.state, job_id)
            if results is not None:  # delivered just before its worker died
                self._fill(out, chunk, results)
                continue
            if job is None:
                reason = "job lost"
            elif status in ALIVE:
                reason = (f"the worker running it ({job.worker_name}) died (killed or crashed); "
                          "retrieve predictions again to retry")
            else:
                reason = f"worker job {status}"
            if job is not None and status == JobStatus.FAILED:
                exc = (job.latest_result().exc_string if job.latest_result() else "") or ""
                reason += f": {exc.strip().splitlines()[-1] if exc.strip() else 'unknown error'}"
            log.warning("%s: %s", job_id, reason)
            for i in chunk.indices:
                out[i] = error_result(version, reason)

    @staticmethod
    def _fill(out: list, chunk: _Chunk, results: list) -> None:
        for i, r in zip(chunk.indices, results):
            out[i] = r

    def _cancel(self, job_id: str) -> None:
        try:
            job = Job.fetch(job_id, connection=self.rq_conn, serializer=JSONSerializer)
            if job.get_status() == JobStatus.QUEUED:
                job.cancel()
        except Exception:  # gone already: nothing to cancel
            pass

    def _observe(self, kind: str, t0: float, out: list) -> None:
        self.metrics.predict_seconds.labels(kind).observe(time.monotonic() - t0)
        for r in out:
            outcome = "pending" if r.get("pending") else ("error" if r.get("error") else "done")
            self.metrics.tasks.labels(outcome).inc()
