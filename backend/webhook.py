"""/webhook: Label Studio events. Must answer in milliseconds (LS waits for it inside the annotator's save,
1 s timeout, no retry), so it only counts and enqueues.

Payload shapes (LS 1.23): ANNOTATION_CREATED / ANNOTATION_UPDATED = {action, annotation, project, task};
START_TRAINING = {action, project} (no annotations: the fine-tune job pulls them from LS). The project object
carries `created_at`, which with the id names the project's state (labelstudio/identity.py). LS's project
webhook sends every other action too (TASKS_CREATED, ANNOTATIONS_DELETED, ...): those are acknowledged and
ignored.
"""
from __future__ import annotations

import logging
from typing import Tuple

from jobs import finetune_state
from jobs.projects import resolve
from labelstudio.identity import ProjectRef

log = logging.getLogger(__name__)

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}
TRAIN_ACTION = "START_TRAINING"


class WebhookError(ValueError):
    """A payload we cannot read (-> 400)."""


class WebhookService:
    def __init__(self, settings, rq_conn, state, instance: str) -> None:
        self.settings, self.rq_conn, self.state, self.instance = settings, rq_conn, state, instance

    def handle(self, payload) -> Tuple[dict, int]:
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            raise WebhookError("expected a JSON object with an 'action'")
        action = payload["action"]
        if action not in ANNOTATION_ACTIONS and action != TRAIN_ACTION:
            return {"status": "ignored", "action": action}, 200
        try:
            annotation = payload.get("annotation") if isinstance(payload.get("annotation"), dict) else {}
            project = resolve(self.state, self.instance, payload.get("project") or annotation.get("project"))
        except ValueError as exc:
            raise WebhookError(f"{action}: {exc}") from None

        if action == TRAIN_ACTION:
            outcome = self.request_finetune(project)
            log.info("project %s: START_TRAINING -> fine-tune %s", project, outcome)
            return {"status": "ok", "action": action, "project": project.id, "key": project.key,
                    "finetune": outcome}, 201

        annotation = payload.get("annotation") if isinstance(payload.get("annotation"), dict) else {}
        if annotation.get("was_cancelled"):
            return {"status": "ignored", "action": action, "reason": "skipped task"}, 200
        every = self.settings.train_every_n_annotations
        due = finetune_state.count_annotation(self.state, project.key, every)
        body = {"status": "ok", "action": action, "project": project.id, "key": project.key, "finetune": "not-due"}
        if due:
            body["finetune"] = self.request_finetune(project)
            log.info("project %s: %d new annotations -> fine-tune %s", project, every, body["finetune"])
        return body, 201

    def request_finetune(self, project: ProjectRef) -> str:
        """enqueued, already-queued, rerun-requested, or recheck-scheduled (jobs.finetune_state.trigger)."""
        return finetune_state.trigger(self.rq_conn, self.state, self.settings, project)

