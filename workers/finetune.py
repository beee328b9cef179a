"""Fine-tune one project's model from its Label Studio annotations; promote the result only if not worse.

1. Pull the project (label config) and its annotated tasks from Label Studio (the source of truth).
2. Per task, the newest non-cancelled annotation (ground truth first): union of its BrushLabels (RLE) or
   PolygonLabels regions -> mask at the image's original size; expression = the annotation's TextArea text,
   else the task data's <Text> value.
3. Interchange data set in a temp dir; a deterministic ~FINETUNE_HOLDOUT of tasks (at least 1) is held out as
   the "test" split. No "val" split is given to train(), so the held-out tasks never influence it.
4. Train from the project's current checkpoint; evaluate current and new on the held-out tasks; promote if
   new gIoU >= current gIoU - FINETUNE_PROMOTE_TOLERANCE: the checkpoint moves (rename, atomic) to
   MODEL_DIR/<project>/<version>, and the version is set in Redis, where every worker's next job sees it.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

from backend import stats, training
from backend.export import task_sample
from backend.labelconfig import LabelConfigError, ProjectConfig, parse_label_config
from backend.queues import enqueue_finetune
from backend.versions import new_version_name

log = logging.getLogger(__name__)


class FinetuneSkipped(Exception):
    """Nothing to train on (yet): not a failure."""


def run_finetune(rt, project: str, job_id: str) -> dict:
    s = rt.settings
    if not training.start_finetune(rt.state, project, job_id, s.finetune_timeout_s + 600):
        log.info("project %s: another fine-tune is running; it will rerun after it finishes", project)
        return {"status": "deferred"}
    t0 = time.time()
    outcome, report = "failed", {}
    try:
        stats.set_finetune_status(rt.state, project, state="running", job=job_id, started=t0)
        report = _finetune(rt, project, job_id)
        outcome = report["status"]
        return report
    except FinetuneSkipped as exc:
        outcome, report = "skipped", {"status": "skipped", "reason": str(exc)}
        log.info("project %s: fine-tune skipped: %s", project, exc)
        return report
    except Exception as exc:
        report = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        log.exception("project %s: fine-tune failed", project)
        raise
    finally:
        seconds = time.time() - t0
        stats.incr(rt.state, f"finetune:{outcome}")
        stats.record_job(rt.state, "finetune", seconds, outcome != "failed")
        stats.set_finetune_status(rt.state, project, state=outcome, job=job_id, seconds=round(seconds, 2),
                                  **{k: v for k, v in report.items() if k != "status"})
        successor = training.finish_finetune(rt.state, project, job_id)
        if successor:
            log.info("project %s: triggers arrived during the run: enqueueing %s", project, successor)
            enqueue_finetune(rt.rq_conn, s, project, successor)


def _finetune(rt, project: str, job_id: str) -> dict:
    from refseg_model.data.interchange import read_interchange
    from refseg_model.evaluate import evaluate_samples
    from refseg_model.predictor import RefSegPredictor, resolve_device
    from refseg_model.train import TrainConfig, train

    s = rt.settings
    if not rt.ls.configured:
        raise FinetuneSkipped("LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not set: cannot read annotations")
    try:
        cfg = parse_label_config(rt.ls.project(project).get("label_config") or "")
    except LabelConfigError as exc:
        raise FinetuneSkipped(f"label config: {exc}") from None
    current = rt.versions.current(project)
    n = int(rt.state.incr(f"refseg:project:{project}:ft_counter"))
    version = new_version_name(rt.versions.base, project, n)
    project_dir = Path(s.model_dir) / project
    candidate = project_dir / f".candidate-{job_id}"
    work = Path(tempfile.mkdtemp(prefix=f"refseg-ft-{project}-"))
    try:
        count = _write_dataset(rt, cfg, project, work)
        log.info("project %s: %d annotated task(s) -> fine-tuning %s from %s", project, count, version,
                 current.version)
        stats.set_finetune_status(rt.state, project, state="training", samples=count, version=version)
        result = train(TrainConfig(
            data=str(work), out=str(candidate), init=current.checkpoint, steps=s.finetune_steps,
            batch_size=s.finetune_batch_size, lr=s.finetune_lr, version=version,
            device="cuda" if s.device.startswith("cuda") else s.device,
            progress=False, resume=False, eval_every=s.finetune_steps))
        held_out = read_interchange(work, "test")
        iou_old, iou_new = [], []
        old = evaluate_samples(rt.models.get(current.checkpoint), held_out, progress=False, per_sample=iou_old)
        new = evaluate_samples(RefSegPredictor.from_spec(str(candidate), device=resolve_device(rt.models.device)), held_out,
                               progress=False, per_sample=iou_new)
        report = {"version": version, "parent": current.version, "samples": count, "held_out": len(held_out),
                  "steps": result.steps, "train_seconds": round(result.seconds, 2),
                  "giou_new": new["gIoU"], "giou_current": old["gIoU"],
                  "ciou_new": new["cIoU"], "ciou_current": old["cIoU"], **paired_comparison(iou_new, iou_old)}
        se = report["giou_delta_se"]
        verdict = (f"held-out gIoU {new['gIoU']:.4f} vs {old['gIoU']:.4f} for {current.version} "
                   f"({report['giou_delta']:+.4f} ± {'unknown' if se is None else f'{se:.4f}'} s.e.; better on "
                   f"{report['held_out_better']}, worse on {report['held_out_worse']} of {len(held_out)})")
        if new["gIoU"] + s.finetune_promote_tolerance < old["gIoU"]:
            log.info("project %s: %s not promoted: %s", project, version, verdict)
            return {"status": "rejected", **report}
        final = project_dir / version
        if final.exists():  # a leftover of a crashed run with the same number: never overwrite silently
            shutil.rmtree(final)
        candidate.rename(final)
        rt.versions.promote(project, version, str(final.resolve()), parent=current.version,
                            metrics={"gIoU": new["gIoU"], "cIoU": new["cIoU"], "gIoU_parent": old["gIoU"],
                                     "samples": count})
        log.info("project %s: promoted %s: %s", project, version, verdict)
        return {"status": "promoted", **report}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(candidate, ignore_errors=True)
        shutil.rmtree(candidate.with_name(candidate.name + ".train"), ignore_errors=True)


# ------------------------------------------------------------------------------------------------- data set
def _write_dataset(rt, cfg: ProjectConfig, project: str, root: Path) -> int:
    from PIL import Image

    from refseg_model.data.interchange import write_annotations
    from refseg_model.imageio import ImageLoadError, save_mask

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    records = []
    for task in rt.ls.labeled_tasks(project):
        sample, why = task_sample(cfg, task)  # one definition of "the sample of a task", shared with export
        if sample is None:
            log.debug("project %s task %s: skipped, %s", project, task.get("id"), why)
            continue
        mask, expression, _ = sample
        url = (task.get("data") or {}).get(cfg.image_key)
        try:
            image = rt.media.image(url, task.get("id"), project)
        except (ValueError, OSError, ImageLoadError) as exc:
            log.warning("project %s task %s: skipped, image: %s", project, task.get("id"), exc)
            continue
        if image.shape[:2] != mask.shape:
            log.warning("project %s task %s: skipped, mask %s does not match image %s", project, task.get("id"),
                        mask.shape, image.shape[:2])
            continue
        name = f"task{int(task['id'])}"
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        save_mask(mask, root / "masks" / f"{name}.png")
        records.append({"image": f"images/{name}.png", "mask": f"masks/{name}.png", "expression": expression,
                        "task": int(task["id"])})
    if len(records) < rt.settings.finetune_min_annotations:
        raise FinetuneSkipped(f"{len(records)} usable annotated task(s); need at least "
                              f"{rt.settings.finetune_min_annotations}")
    records.sort(key=lambda r: r["task"])
    test = held_out_tasks(project, [r["task"] for r in records], rt.settings.finetune_holdout)
    for r in records:
        r["split"] = "test" if r["task"] in test else "train"
    write_annotations(root, records)
    return len(records)


def paired_comparison(iou_new, iou_current) -> dict:
    """How far to trust "new vs current" on a held-out set: the mean per-task IoU difference, its standard error
    (None with fewer than 2 tasks: unknown), and on how many tasks the new version is better / worse.
    The promotion rule stays "not worse on average"; this tells annotators whether a small held-out set could
    decide it at all."""
    d = [a - b for a, b in zip(iou_new, iou_current)]
    n = len(d)
    mean = sum(d) / n if n else 0.0
    se = round((sum((x - mean) ** 2 for x in d) / (n - 1) / n) ** 0.5, 6) if n > 1 else None
    return {"giou_delta": round(mean, 6), "giou_delta_se": se,
            "held_out_better": sum(x > 1e-9 for x in d), "held_out_worse": sum(x < -1e-9 for x in d)}


def _unit_hash(project: str, task: int) -> float:
    digest = hashlib.blake2b(f"refseg-holdout:{project}:{task}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def held_out_tasks(project: str, tasks: list, fraction: float) -> set:
    """The tasks held out to compare the new version against the current one.

    A task is held out when a hash of (project, task id) falls below `fraction`, so its side never changes as
    the project grows: a version is never scored on tasks that it, or a version it descends from, trained on
    (a shuffle of the whole list would move earlier training tasks into the held-out set and favour the current
    version). At least one task is held out and one trained on."""
    if len(tasks) < 2:
        return set()
    h = {t: _unit_hash(project, t) for t in tasks}
    ranked = sorted(tasks, key=h.__getitem__)
    test = {t for t in ranked if h[t] < fraction}
    if not test:
        test = {ranked[0]}
    elif len(test) == len(tasks):
        test.discard(ranked[-1])
    return test


