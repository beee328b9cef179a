"""RQ jobs (plain functions, JSON arguments). Enqueued by the web process by dotted path.

    predict_tasks(project, config, tasks, request_id, late)   batch pre-annotation of a chunk of tasks
    predict_interactive(project, config, tasks, request_id)   one task: expression typed in the editor and/or
                                                              clicks / a box of the smart tools ("prompts")
    finetune_project(project)                                 see workers/finetune.py
    recheck_finetune(project)                                 a trigger met a job of undecided liveness

`project` is the identity the web process gave the job (labelstudio.identity.ProjectRef.to_dict()): its Label
Studio instance, id and creation stamp. A worker whose LABEL_STUDIO_URL is another instance refuses the job
(every task gets an error; nothing is fetched from or posted to its Label Studio), and a late result is posted
only while Label Studio's project with that id is still the one created at that stamp.

A task failure (image cannot be fetched or decoded) becomes that task's empty result with an "error" note;
only a broken model (cannot load) fails the whole job, which /predict reports for each of its tasks.
"""
from __future__ import annotations

import logging
import time
from typing import List, Optional

from rq import get_current_job

from formats.image_source import ImageLoadError
from jobs import finetune_state, stats
from jobs.handoff import POSTED_GRACE_S, deliver, pending_key, posted_marker
from jobs.projects import describe_instance
from labelstudio.identity import ProjectRef
from labelstudio.labelconfig import ProjectConfig
from labelstudio.media import MediaError
from labelstudio.predictions import error_result, prediction
from labelstudio.prompts import prompts_from_json, rescale

from .runtime import runtime

log = logging.getLogger(__name__)
PREDICT_BATCH = 16
PROJECT_STAMP_TTL_S = 30.0  # how long a worker trusts Label Studio's answer to "which project is <id> now"
_project_stamps: dict = {}  # project id -> (creation stamp or None if gone, monotonic time asked)


def predict_tasks(project: dict, config: dict, tasks: List[dict], request_id: Optional[str] = None,
                  late: str = "post") -> dict:
    """`tasks`: [{"id", "image", "expression"}]. Results go to the waiting /predict, or, if it has answered
    already (`late == "post"`), to Label Studio via POST /api/predictions."""
    return _run("batch", project, config, tasks, request_id, late, interactive=False)


def predict_interactive(project: dict, config: dict, tasks: List[dict], request_id: Optional[str] = None,
                        late: str = "drop") -> dict:
    """Same contract; uses the predictor's embedding cache so that re-prompting the same image is fast."""
    return _run("interactive", project, config, tasks, request_id, late, interactive=True)


def finetune_project(project: dict) -> dict:
    from .finetune import run_finetune

    return run_finetune(runtime(), project, get_current_job().id)


def recheck_finetune(project: dict) -> dict:
    """A fine-tune trigger met a running job whose worker's liveness was undecided: decide now (waiting out the
    grace if needed) and enqueue the fine-tune if that job is dead (jobs.finetune_state.recheck)."""
    rt = runtime()
    ref = ProjectRef.from_job(project)
    refusal = foreign(rt, ref)
    if refusal:
        raise RuntimeError(refusal)
    outcome = finetune_state.recheck(rt.rq_conn, rt.state, rt.settings, ref)
    log.info("project %s: re-checked the fine-tune trigger: %s", ref, outcome)
    return {"finetune": outcome}


def foreign(rt, ref: Optional[ProjectRef]) -> str:
    """Why this worker must not serve a job for `ref` ('' if it may): the job was queued for another Label
    Studio (by a web process with another LABEL_STUDIO_URL), or by a backend version without project identity."""
    if ref is None:
        return ("the job has no project identity (queued by an older version of the backend): not run, so that "
                "nothing is posted into a Label Studio it was not meant for")
    if ref.instance != rt.instance:
        return (f"the job was queued for Label Studio {describe_instance(rt.state, ref.instance)}, and this worker "
                f"serves {describe_instance(rt.state, rt.instance)}: give the web process and the workers the same "
                "LABEL_STUDIO_URL")
    return ""


def stale(rt, ref: ProjectRef) -> str:
    """Why a late result of `ref` must not be posted ('' if it may): Label Studio's project with that id is no
    longer the one created at `ref.created` (deleted, or another Label Studio life at the same URL)."""
    now = time.monotonic()
    cached = _project_stamps.get(ref.id)
    if cached is None or now - cached[1] > PROJECT_STAMP_TTL_S:
        cached = (rt.ls.project_created(ref.id), now)
        _project_stamps[ref.id] = cached
    created = cached[0]
    if created is None:
        return f"project {ref.id} no longer exists in Label Studio"
    if created and created != ref.created:  # '': this Label Studio does not say when projects were created
        return (f"project {ref.id} in Label Studio was created at {created}, not at {ref.created} when this job was "
                "queued (re-created, or another Label Studio at the same URL)")
    return ""


# ------------------------------------------------------------------------------------------------ internals
def _run(kind, project, config, tasks, request_id, late, interactive) -> dict:
    rt = runtime()
    t0 = time.monotonic()
    ok = False
    try:
        ref = ProjectRef.from_job(project)
        refusal = foreign(rt, ref)
        if refusal:
            log.warning("%s job for project %s refused: %s", kind, project, refusal)
            version = rt.versions.current(ref.key).version if ref else rt.versions.base.version
            results = [error_result(version, refusal) for _ in tasks]
        else:
            results = _predict(rt, ProjectConfig.from_dict(config), ref, tasks, interactive)
        job = get_current_job()
        job_id = job.id if job is not None else f"local-{time.time_ns()}"
        if deliver(rt.state, job_id, request_id, results):
            delivered = "response"
        elif refusal:
            stats.incr(rt.state, "late:foreign", len(tasks))
            delivered = "refused"
        elif late == "post":
            delivered = _post_late(rt, ref, tasks, results)
        else:
            delivered = "dropped"
        ok = True
        return {"tasks": len(tasks), "delivered": delivered}
    finally:
        stats.record_job(rt.state, kind, time.monotonic() - t0, ok)


def _predict(rt, cfg: ProjectConfig, ref: ProjectRef, tasks: List[dict], interactive: bool) -> List[dict]:
    project = ref.id
    current = rt.versions.current(ref.key)
    predictor = rt.models.get(current.checkpoint)  # a newly promoted version is loaded here (hot reload)
    results: List[Optional[dict]] = [None] * len(tasks)
    images = {}
    for i, task in enumerate(tasks):
        try:
            images[i] = rt.media.image(task["image"], task.get("id"), project)
        except (MediaError, ImageLoadError, OSError) as exc:
            log.warning("project %s task %s: %s", project, task.get("id"), exc)
            results[i] = error_result(current.version, f"image: {exc}")
    if interactive:
        for i, image in images.items():
            # all clicks so far come with each request: the predictor finds the previous answer in its memory
            # (mask input) and the image + text encodings in its caches, so a click runs the mask decoder only
            prompts = rescale(prompts_from_json(tasks[i].get("prompts")), image.shape[1], image.shape[0])
            p = predictor.predict_sequence(image, tasks[i].get("expression"), prompts.points, prompts.box)
            results[i] = prediction(p.mask, p.score, cfg, current.version)
    elif images:
        order = list(images)
        preds = predictor.predict_many(images.__getitem__, [(i, tasks[i]["expression"]) for i in order],
                                       batch_size=PREDICT_BATCH)
        for i, p in zip(order, preds):
            results[i] = prediction(p.mask, p.score, cfg, current.version)
    return results  # type: ignore[return-value]


def _post_late(rt, ref: ProjectRef, tasks: List[dict], results: List[dict]) -> str:
    """/predict answered with placeholders for these tasks: post their real predictions to Label Studio, if its
    project `ref.id` is still the project the job was queued for."""
    project = ref.id
    if not rt.ls.configured:
        log.error("project %s: %d late prediction(s) lost: LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY not set",
                  project, len(tasks))
        stats.incr(rt.state, "late:undeliverable", len(tasks))
        return "undeliverable"
    try:
        why = stale(rt, ref)
    except Exception as exc:  # LS down: the posts would fail too; the next "Retrieve predictions" asks again
        why, outcome = f"cannot ask Label Studio which project {project} is: {exc}", "late:post_failed"
    else:
        outcome = "late:stale"
    if why:
        keys = [pending_key(ref.key, t["id"]) for t in tasks if t.get("id") is not None]
        if keys:
            rt.state.delete(*keys)
        stats.incr(rt.state, outcome, len(tasks))
        log.warning("project %s: %d late prediction(s) not posted: %s", ref, len(tasks), why)
        return "stale" if outcome == "late:stale" else "post_failed"
    posted = failed = 0
    for task, r in zip(tasks, results):
        if task.get("id") is None:
            continue
        key = pending_key(ref.key, task["id"])
        try:
            rt.ls.create_prediction(task["id"], r.get("result", []), float(r.get("score", 0.0)), r["model_version"],
                                    project=project)
            posted += 1
            rt.state.set(key, posted_marker(r["model_version"]), ex=POSTED_GRACE_S)
        except Exception as exc:  # LS down or task deleted: the next "Retrieve predictions" asks again
            failed += 1
            rt.state.delete(key)
            log.error("project %s task %s: posting the late prediction failed: %s", project, task["id"], exc)
    if posted:
        stats.incr(rt.state, "late:posted", posted)
    if failed:
        stats.incr(rt.state, "late:post_failed", failed)
    log.info("project %s: posted %d late prediction(s) to Label Studio (%d failed)", project, posted, failed)
    return "posted"
