"""/webhook: Label Studio events. Must answer in milliseconds (LS waits for it inside the annotator's save,
1 s timeout, no retry), so it only counts and enqueues.

Payload shapes (LS 1.23): ANNOTATION_CREATED / ANNOTATION_UPDATED = {action, annotation, project, task};
START_TRAINING = {action, project} (no annotations: the fine-tune job pulls them from LS). LS's project
webhook sends every other action too (TASKS_CREATED, ANNOTATIONS_DELETED, ...): those are acknowledged and
ignored.
"""
from __future__ import annotations

import logging
from typing import Tuple

from rq.job import Job
from rq.serializers import JSONSerializer

from jobs import finetune_state
from jobs.liveness import job_alive
from jobs.queues import enqueue_finetune
from labelstudio.labelconfig import project_id

log = logging.getLogger(__name__)

ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}
TRAIN_ACTION = "START_TRAINING"


class WebhookError(ValueError):
    """A payload we cannot read (-> 400)."""


class WebhookService:
    def __init__(self, settings, rq_conn, state) -> None:
        self.settings, self.rq_conn, self.state = settings, rq_conn, state

    def handle(self, payload) -> Tuple[dict, int]:
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            raise WebhookError("expected a JSON object with an 'action'")
        action = payload["action"]
        if action not in ANNOTATION_ACTIONS and action != TRAIN_ACTION:
            return {"status": "ignored", "action": action}, 200
        try:
            annotation = payload.get("annotation") if isinstance(payload.get("annotation"), dict) else {}
            project = project_id(payload.get("project") or annotation.get("project"))
        except ValueError as exc:
            raise WebhookError(f"{action}: {exc}") from None

        if action == TRAIN_ACTION:
            outcome = self.request_finetune(project)
            log.info("project %s: START_TRAINING -> fine-tune %s", project, outcome)
            return {"status": "ok", "action": action, "project": project, "finetune": outcome}, 201

        annotation = payload.get("annotation") if isinstance(payload.get("annotation"), dict) else {}
        if annotation.get("was_cancelled"):
            return {"status": "ignored", "action": action, "reason": "skipped task"}, 200
        every = self.settings.train_every_n_annotations
        due = finetune_state.count_annotation(self.state, project, every)
        body = {"status": "ok", "action": action, "project": project, "finetune": "not-due"}
        if due:
            body["finetune"] = self.request_finetune(project)
            log.info("project %s: %d new annotations -> fine-tune %s", project, every, body["finetune"])
        return body, 201

    def request_finetune(self, project: str) -> str:
        return finetune_state.request_finetune(self.state, project, lambda job_id: enqueue_finetune(
            self.rq_conn, self.settings, project, job_id), self._job_alive)

    def _job_alive(self, job_id: str) -> bool:
        job = Job.fetch_many([job_id], connection=self.rq_conn, serializer=JSONSerializer)[0]
        return job_alive(self.state, job)

