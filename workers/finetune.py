"""Fine-tune one project's model from its Label Studio annotations; promote the result only if not worse.

1. Pull the project (label config) and its annotated tasks from Label Studio (the source of truth).
2. Per task, the newest non-cancelled annotation (ground truth first): union of its BrushLabels (RLE) or
   PolygonLabels regions -> mask at the image's original size; expression = the annotation's TextArea text,
   else the task data's <Text> value.
3. Interchange data set in a temp dir; a deterministic ~FINETUNE_HOLDOUT of tasks (at least 1) is held out as
   the "test" split. No "val" split is given to train(), so the held-out tasks never influence it.
4. Train from the project's current checkpoint; evaluate current and new on the held-out tasks; promote if
   new gIoU >= current gIoU - FINETUNE_PROMOTE_TOLERANCE: the checkpoint moves (rename, atomic) to
   MODEL_DIR/<project key>/<version>, and the version is set in Redis, where every worker's next job sees it.

The job carries the project's identity (labelstudio/identity.py): a job queued for another Label Studio fails
with that reason, and one whose project Label Studio has re-created since (same id, another creation time) is
skipped, so that no lineage trains on another project's annotations.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from formats.datasets.interchange import write_annotations
from formats.datasets.splits import stable_splits
from jobs import finetune_state, stats
from jobs.queues import enqueue_finetune
from jobs.versions import new_version_name, next_finetune_number
from labelstudio.identity import ProjectRef, created_stamp
from labelstudio.labelconfig import LabelConfigError, ProjectConfig, parse_label_config
from labelstudio.samples import skip_summary, write_task_samples

log = logging.getLogger(__name__)


class FinetuneSkipped(Exception):
    """Nothing to train on (yet): not a failure."""


def run_finetune(rt, project_job: dict, job_id: str) -> dict:
    """The fine-tune job of the project `project_job` (ProjectRef.to_dict(), as queued)."""
    from .jobs import foreign

    s = rt.settings
    ref = ProjectRef.from_job(project_job)
    refusal = foreign(rt, ref)
    if refusal:
        log.error("fine-tune job %s refused: %s", job_id, refusal)
        raise RuntimeError(refusal)
    project = ref.key
    if not finetune_state.start_finetune(rt.state, project, job_id, s.finetune_timeout_s + 600):
        log.info("project %s: another fine-tune is running; it will rerun after it finishes", project)
        return {"status": "deferred"}
    t0 = time.time()
    outcome, report = "failed", {}
    try:
        stats.set_finetune_status(rt.state, project, state="running", job=job_id, started=t0,
                                  step=0, steps=s.finetune_steps, loss=None, progress_at=None)
        report = _finetune(rt, ref, job_id)
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
        _record_outcome(rt.state, project, job_id, outcome, report, seconds)
        successor = finetune_state.finish_finetune(rt.state, project, job_id)
        if successor:
            log.info("project %s: triggers arrived during the run: enqueueing %s", project, successor)
            enqueue_finetune(rt.rq_conn, s, ref, successor)


def _record_outcome(state, project: str, job_id: str, outcome: str, report: dict, seconds: float) -> None:
    """One entry of the project's outcome list (jobs.stats), which the status page plots and lists."""
    if outcome not in stats.FINETUNE_OUTCOMES:  # "deferred": this job never ran a fine-tune
        return
    extra = {k: report[k] for k in ("parent", "samples", "held_out", "giou_delta", "giou_delta_se", "verdict",
                                    "click_iou_new", "click_iou_current") if k in report}
    try:
        stats.record_finetune_outcome(state, project, status=outcome, version=report.get("version"),
                                      giou_new=report.get("giou_new"), giou_current=report.get("giou_current"),
                                      reason=report.get("reason"), job=job_id, seconds=round(seconds, 2), **extra)
    except Exception as exc:  # Redis gone at this moment: the verdict is in the log; do not mask the job's own error
        log.warning("project %s: could not record the fine-tune outcome: %s", project, exc)


class ProgressReporter:
    """TrainConfig.on_progress for a fine-tune: writes {step, steps, loss} to the project's fine-tune status at
    most every `every_s` seconds (and always the last step). Never raises: Redis trouble must not stop training."""

    def __init__(self, state, project: str, every_s: float = 1.0, clock=time.monotonic) -> None:
        self.state, self.project, self.every_s, self.clock = state, project, every_s, clock
        self.last = None  # clock of the last write

    def __call__(self, progress: dict) -> None:
        now = self.clock()
        step, steps = int(progress["step"]), int(progress["steps"])
        if self.last is not None and now - self.last < self.every_s and step < steps:
            return
        self.last = now
        try:
            stats.set_finetune_progress(self.state, self.project, step, steps, progress.get("loss"))
        except Exception as exc:
            log.warning("project %s: could not write fine-tune progress: %s", self.project, exc)


def finetune_config(settings, data: Path, out: Path, init: str, version: str, on_progress=None):
    """The training run of one fine-tune: FINETUNE_* settings, on TRAIN_DEVICE, else DEVICE (cuda:1 stays
    cuda:1); `on_progress` gets {"step", "steps", "loss"} after every step. Part of each batch
    (FINETUNE_INTERACTIVE_FRAC) trains with simulated clicks, so that corrections keep the click tool sharp."""
    from refseg_model.device import resolve_device
    from refseg_model.train import TrainConfig

    return TrainConfig(data=str(data), out=str(out), init=init, steps=settings.finetune_steps,
                       batch_size=settings.finetune_batch_size, lr=settings.finetune_lr, version=version,
                       interactive_frac=settings.finetune_interactive_frac, zoom_frac=settings.finetune_zoom_frac,
                       device=resolve_device(settings.trainer_device), progress=False, resume=False,
                       eval_every=settings.finetune_steps, on_progress=on_progress)


def _finetune(rt, ref: ProjectRef, job_id: str) -> dict:
    from formats.datasets.interchange import read_interchange
    from refseg_model.evaluate import evaluate_clicks, evaluate_samples
    from refseg_model.predictor import RefSegPredictor, resolve_device
    from refseg_model.train import train, train_state_dir

    s = rt.settings
    if not rt.ls.configured:
        raise FinetuneSkipped("LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not set: cannot read annotations")
    project = ref.key
    info = rt.ls.project(ref.id) or {}
    if info.get("created_at") and created_stamp(info["created_at"]) != ref.created:
        raise FinetuneSkipped(f"Label Studio's project {ref.id} was created at {created_stamp(info['created_at'])}, "
                              f"not at {ref.created} as the project this job was queued for (deleted and "
                              "re-created, or another Label Studio at the same URL): its annotations are not this "
                              "lineage's")
    try:
        cfg = parse_label_config(info.get("label_config") or "")
    except LabelConfigError as exc:
        raise FinetuneSkipped(f"label config: {exc}") from None
    current = rt.versions.current(project)
    n = next_finetune_number(rt.state, project)
    version = new_version_name(rt.versions.base, ref.id, n)
    project_dir = Path(s.model_dir) / project
    candidate = project_dir / f".candidate-{job_id}"
    work = Path(tempfile.mkdtemp(prefix=f"refseg-ft-{project}-"))
    try:
        count = _write_dataset(rt, cfg, ref, work)
        log.info("project %s: %d annotated task(s) -> fine-tuning %s from %s", project, count, version,
                 current.version)
        stats.set_finetune_status(rt.state, project, state="training", samples=count, version=version)
        result = train(finetune_config(s, work, candidate, current.checkpoint, version,
                                       on_progress=ProgressReporter(rt.state, project)))
        held_out = read_interchange(work, "test")
        iou_old, iou_new = [], []
        current_model = rt.models.get(current.checkpoint)
        new_model = RefSegPredictor.from_spec(str(candidate), device=resolve_device(rt.models.device))
        # text answers are scored where there is an expression; every held-out mask also gets one simulated
        # corrective click (what annotators who click see). A clicks-only project has no text to score: its
        # versions are compared on the click figure instead.
        with_text = [x for x in held_out if x.expression]
        click_iou_old, click_iou_new = [], []
        click_old = evaluate_clicks(current_model, held_out, clicks=1, per_sample=click_iou_old).get("IoU@1")
        click_new = evaluate_clicks(new_model, held_out, clicks=1, per_sample=click_iou_new).get("IoU@1")
        if with_text:
            old = evaluate_samples(current_model, with_text, progress=False, per_sample=iou_old)
            new = evaluate_samples(new_model, with_text, progress=False, per_sample=iou_new)
            score_new, score_old, measure = new["gIoU"], old["gIoU"], "gIoU"
        else:
            old = new = {"gIoU": None, "cIoU": None}
            iou_new, iou_old = click_iou_new, click_iou_old
            score_new, score_old, measure = click_new, click_old, "IoU after one click (no expressions)"
        report = {"version": version, "parent": current.version, "samples": count, "held_out": len(held_out),
                  "steps": result.steps, "train_seconds": round(result.seconds, 2),
                  "giou_new": new["gIoU"], "giou_current": old["gIoU"],
                  "ciou_new": new["cIoU"], "ciou_current": old["cIoU"],
                  "click_iou_new": click_new, "click_iou_current": click_old, **paired_comparison(iou_new, iou_old)}
        se = report["giou_delta_se"]
        clicks = ("" if not with_text or click_new is None or click_old is None
                  else f"; IoU after one click {click_new:.4f} vs {click_old:.4f}")
        verdict = (f"held-out {measure} {score_new:.4f} vs {score_old:.4f} for {current.version} "
                   f"({report['giou_delta']:+.4f} ± {'unknown' if se is None else f'{se:.4f}'} s.e.; better on "
                   f"{report['held_out_better']}, worse on {report['held_out_worse']} of {len(iou_new)}{clicks})")
        report["verdict"] = verdict
        if not score_new >= score_old - s.finetune_promote_tolerance:  # NaN is worse, never promoted
            log.info("project %s: %s not promoted: %s", project, version, verdict)
            tolerance = f", tolerance {s.finetune_promote_tolerance:g}" if s.finetune_promote_tolerance else ""
            return {"status": "rejected", **report, "reason": f"worse than {current.version}{tolerance}: {verdict}"}
        final = project_dir / version
        if final.exists():  # a leftover of a crashed run with the same number: never overwrite silently
            shutil.rmtree(final)
        candidate.rename(final)
        # the training state goes before the promotion is published: whoever sees the new version sees no leftovers
        shutil.rmtree(train_state_dir(candidate), ignore_errors=True)
        rt.versions.promote(project, version, str(final.resolve()), parent=current.version,
                            metrics={"gIoU": new["gIoU"], "cIoU": new["cIoU"], "gIoU_parent": old["gIoU"],
                                     "click_IoU": click_new, "click_IoU_parent": click_old, "samples": count})
        log.info("project %s: promoted %s: %s", project, version, verdict)
        return {"status": "promoted", **report}
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(candidate, ignore_errors=True)
        shutil.rmtree(train_state_dir(candidate), ignore_errors=True)


# ------------------------------------------------------------------------------------------------- data set
def _write_dataset(rt, cfg: ProjectConfig, ref: ProjectRef, root: Path) -> int:
    """The project's annotated tasks as an interchange data set under `root` (labelstudio.samples, the path
    `refseg export` takes too), images rendered as predictions see them; held-out tasks are the "test" split."""
    project = ref.id
    records, skipped = write_task_samples(rt.ls.labeled_tasks(project), cfg,
                                          lambda url, tid: rt.media.image(url, tid, project), root,
                                          allow_clicks_only=True)
    for item in skipped:  # unreadable images and size mismatches are worth a look; unlabelled tasks are not
        level = logging.WARNING if item["reason"].startswith(("image", "mask")) else logging.DEBUG
        log.log(level, "project %s task %s: skipped, %s", project, item["task"], item["reason"])
    if len(records) < rt.settings.finetune_min_annotations:
        why = skip_summary(skipped)
        hint = (" (fine-tuning learns from an expression per mask: a TextArea or the task's <Text> value)"
                if "no referring expression" in why else "")
        raise FinetuneSkipped(f"{len(records)} usable annotated task(s); need at least "
                              f"{rt.settings.finetune_min_annotations}" + (f"; skipped: {why}{hint}" if why else ""))
    records.sort(key=lambda r: r["task"])
    test = held_out_tasks(ref.key, [r["task"] for r in records], rt.settings.finetune_holdout)
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


def held_out_tasks(project: str, tasks: list, fraction: float) -> set:
    """The tasks held out to compare the new version against the current one.

    A task's side comes from a hash of (project, task id) (formats.datasets.splits.stable_splits), so it never
    changes as the project grows: a version is never scored on tasks that it, or a version it descends from,
    trained on (a shuffle of the whole list would move earlier training tasks into the held-out set and favour
    the current version). At least one task is held out and one trained on."""
    if len(tasks) < 2:
        return set()
    f = min(max(fraction, 1e-9), 1.0 - 1e-9)  # both sides non-empty, whatever the setting
    sides = stable_splits(f"refseg-holdout:{project}", tasks, (f, 1.0 - f), names=("test", "train"))
    return {t for t, side in sides.items() if side == "test"}
