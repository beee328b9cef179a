"""RQ jobs (plain functions, JSON arguments). Enqueued by the web process by dotted path.

    predict_tasks(project, config, tasks, request_id, late)   batch pre-annotation of a chunk of tasks
    predict_interactive(project, config, tasks, request_id)   one task: expression typed in the editor and/or
                                                              clicks / a box of the smart tools ("prompts")
    finetune_project(project)                                 see workers/finetune.py

A task failure (image cannot be fetched or decoded) becomes that task's empty result with an "error" note;
only a broken model (cannot load) fails the whole job, which /predict reports for each of its tasks.
"""
from __future__ import annotations

import logging
import time
from typing import List, Optional

from rq import get_current_job

from formats.image_source import ImageLoadError
from jobs import stats
from jobs.handoff import POSTED_GRACE_S, deliver, pending_key, posted_marker
from labelstudio.labelconfig import ProjectConfig
from labelstudio.media import MediaError
from labelstudio.predictions import error_result, prediction
from labelstudio.prompts import prompts_from_json, rescale

from .runtime import runtime

log = logging.getLogger(__name__)
PREDICT_BATCH = 16


def predict_tasks(project: str, config: dict, tasks: List[dict], request_id: Optional[str] = None,
                  late: str = "post") -> dict:
    """`tasks`: [{"id", "image", "expression"}]. Results go to the waiting /predict, or, if it has answered
    already (`late == "post"`), to Label Studio via POST /api/predictions."""
    return _run("batch", project, config, tasks, request_id, late, interactive=False)


def predict_interactive(project: str, config: dict, tasks: List[dict], request_id: Optional[str] = None,
                        late: str = "drop") -> dict:
    """Same contract; uses the predictor's embedding cache so that re-prompting the same image is fast."""
    return _run("interactive", project, config, tasks, request_id, late, interactive=True)


def finetune_project(project: str) -> dict:
    from .finetune import run_finetune

    return run_finetune(runtime(), str(project), get_current_job().id)


# ------------------------------------------------------------------------------------------------ internals
def _run(kind, project, config, tasks, request_id, late, interactive) -> dict:
    rt = runtime()
    t0 = time.monotonic()
    ok = False
    try:
        results = _predict(rt, ProjectConfig.from_dict(config), str(project), tasks, interactive)
        job = get_current_job()
        job_id = job.id if job is not None else f"local-{time.time_ns()}"
        if deliver(rt.state, job_id, request_id, results):
            delivered = "response"
        elif late == "post":
            delivered = _post_late(rt, str(project), tasks, results)
        else:
            delivered = "dropped"
        ok = True
        return {"tasks": len(tasks), "delivered": delivered}
    finally:
        stats.record_job(rt.state, kind, time.monotonic() - t0, ok)


def _predict(rt, cfg: ProjectConfig, project: str, tasks: List[dict], interactive: bool) -> List[dict]:
    current = rt.versions.current(project)
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


def _post_late(rt, project: str, tasks: List[dict], results: List[dict]) -> str:
    """/predict answered with placeholders for these tasks: post their real predictions to Label Studio."""
    if not rt.ls.configured:
        log.error("project %s: %d late prediction(s) lost: LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY not set",
                  project, len(tasks))
        stats.incr(rt.state, "late:undeliverable", len(tasks))
        return "undeliverable"
    posted = failed = 0
    for task, r in zip(tasks, results):
        if task.get("id") is None:
            continue
        key = pending_key(project, task["id"])
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
