"""The Label Studio ML backend's HTTP side (Flask). It never runs the model: /predict enqueues jobs for the
workers (workers/) and waits for them; /health and /setup answer from memory and Redis only.

    GET  /health, /     {"status": "UP", "model_class": ...}
    POST /setup         {"model_version": <the project's current version>}; 400 for configs we cannot serve
    POST /predict       {"results": [one entry per task, in order]}
    POST /webhook       annotation events and START_TRAINING -> fine-tune jobs
    GET  /metrics       Prometheus
    GET  /status        status page for people (workers, queues, versions, fine-tunes, failures); /status.json
"""
from __future__ import annotations

import logging
from typing import Optional

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from jobs.connections import rq_connection, state_connection
from jobs.projects import register_instance, resolve
from jobs.settings import Settings
from jobs.versions import VersionStore
from labelstudio.identity import ProjectRef
from labelstudio.labelconfig import LabelConfigError, parse_label_config
from labelstudio.prompts import PromptError

from .auth import install_basic_auth
from .metrics import Metrics
from .predict import PredictService
from .status import StatusReader
from .status_page import REFRESH_DEFAULT_S, render
from .webhook import WebhookError, WebhookService

# label-studio-ml backends report the class of their in-process model as `model_class` in /health. This process
# runs no model (the workers do), so the field carries the backend's name, which Label Studio only displays.
BACKEND_NAME = "RefSegBackend"
log = logging.getLogger(__name__)


class BadRequest(ValueError):
    pass


def _json_body() -> dict:
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object body")
    return body


def _project(state, instance: str, body: dict, tasks=None) -> ProjectRef:
    """The project of a /setup or /predict body: "<id>.<created>" as Label Studio sends it, keyed by this
    deployment's Label Studio (labelstudio/identity.py)."""
    raw = body.get("project")
    if raw in (None, "") and tasks:
        raw = tasks[0].get("project") if isinstance(tasks[0], dict) else None
    try:
        return resolve(state, instance, raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def create_app(settings: Optional[Settings] = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    rq_conn = rq_connection(settings.redis_url)
    state = state_connection(settings.redis_url)
    versions = VersionStore(state, settings.base_model)
    instance = register_instance(state, settings.label_studio_url)  # which Label Studio this deployment serves
    metrics = Metrics(rq_conn, state, versions)
    predictor = PredictService(settings, rq_conn, state, versions, metrics)
    webhooks = WebhookService(settings, rq_conn, state, instance)
    status_reader = StatusReader(rq_conn, state, versions)
    if settings.basic_auth_enabled:
        install_basic_auth(app, settings.basic_auth_user, settings.basic_auth_pass)
    if not settings.label_studio_url:
        log.warning("LABEL_STUDIO_URL is not set: workers can only read http(s) images from MEDIA_ALLOWED_HOSTS, "
                    "cannot deliver late batch results, and cannot fine-tune")

    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify(status="UP", model_class=BACKEND_NAME, base_model_version=versions.base.version,
                       status_page="/status")

    @app.post("/setup")
    def setup():
        body = _json_body()
        project = _project(state, instance, body)
        parse_label_config(body.get("schema") or body.get("label_config") or "")
        return jsonify(model_version=versions.current(project.key).version)

    @app.post("/predict")
    def predict():
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise BadRequest("'tasks' must be a non-empty list")
        project = _project(state, instance, body, tasks)
        cfg = parse_label_config(body.get("label_config") or "")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        context = params.get("context") if isinstance(params.get("context"), dict) else None
        if context and context.get("result"):
            results = [predictor.interactive(project, cfg, task, context) for task in tasks]
        elif context is not None and "result" in context:  # interactive, but nothing typed or clicked
            results = predictor.nothing_to_suggest(project, tasks)
        else:
            results = predictor.batch(project, cfg, tasks)
        return jsonify(results=results)

    @app.post("/webhook")
    def webhook():
        body, status = webhooks.handle(request.get_json(force=True, silent=True))
        return jsonify(body), status

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/status")
    def status_page():
        refresh = request.args.get("refresh", type=int)
        refresh = REFRESH_DEFAULT_S if refresh is None else (min(max(refresh, 5), 3600) if refresh > 0 else None)
        html = render(status_reader.snapshot(), refresh_s=refresh)
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/status.json")
    def status_json():
        return jsonify(status_reader.snapshot())

    @app.errorhandler(BadRequest)
    @app.errorhandler(LabelConfigError)
    @app.errorhandler(WebhookError)
    @app.errorhandler(PromptError)
    def bad_request(exc):
        return jsonify(status=400, error=str(exc)), 400

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def redis_down(exc):
        log.error("Redis unavailable: %s", exc)
        return jsonify(status=503, error=f"queue unavailable (Redis at {_redacted(settings.redis_url)})"), 503

    @app.errorhandler(Exception)
    def internal(exc):
        if isinstance(exc, HTTPException):
            return jsonify(status=exc.code, error=exc.description), exc.code
        log.exception("unhandled error on %s", request.path)
        return jsonify(status=500, error=f"{type(exc).__name__}: {exc}"), 500

    @app.after_request
    def count(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        return response

    return app


def _redacted(url: str) -> str:
    """The Redis URL without its password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
