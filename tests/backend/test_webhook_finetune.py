"""Webhooks -> one fine-tune job per project -> new version in Redis -> /setup and the workers serve it."""
from __future__ import annotations

import time

import numpy as np
import redis
import requests
from backend_support import CONFIG_TEXT, add_annotated_project, png, project_key, project_obj, scene, uid, wait_for
from label_studio_sdk.converter.brush import decode_rle

from jobs import finetune_state


def _annotation_event(action: str, project: int, ann_id: int = 1) -> dict:
    return {"action": action, "annotation": {"id": ann_id, "result": [], "was_cancelled": False, "task": 1,
                                             "project": project},
            "project": {**project_obj(project), "label_config": CONFIG_TEXT}, "task": {"id": 1, "data": {}}}


def test_start_training_promotes_a_new_version_that_workers_serve(gunicorn_url, fake_ls, local_predictor,
                                                                 redis_url):
    add_annotated_project(fake_ls, 7, 700, 5)
    setup = {"project": uid(7), "schema": CONFIG_TEXT, "hostname": fake_ls.url, "access_token": "x"}
    before = requests.post(gunicorn_url + "/setup", json=setup).json()["model_version"]
    assert before == "tiny-test"

    t0 = time.monotonic()
    r = requests.post(gunicorn_url + "/webhook", json={"action": "START_TRAINING", "project": project_obj(7)},
                      timeout=5)
    assert time.monotonic() - t0 < 1.0  # LS waits for webhooks with a 1 s timeout (benchmarks/web_stack.py times it)
    assert r.status_code == 201 and r.json()["finetune"] == "enqueued"

    def promoted():
        v = requests.post(gunicorn_url + "/setup", json=setup).json()["model_version"]
        return v if v != before else None

    version = wait_for(promoted, 240, "the fine-tuned version", 0.5)
    assert version == "tiny-test-p7-ft1"
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    key = project_key(7, fake_ls.url)
    checkpoint = state.hget(f"refseg:project:{key}:model", "checkpoint")
    assert checkpoint.endswith(f"/{key}/tiny-test-p7-ft1")

    # "Retrieve predictions" now runs on the new version, in the inference worker (hot reload, no restart)
    img, _ = scene(7001)
    fake_ls.files["/data/upload/7/new.png"] = png(img)
    body = {"tasks": [{"id": 7001, "data": {"image": "/data/upload/7/new.png", "expression": "the bright block"}}],
            "project": uid(7), "label_config": CONFIG_TEXT, "params": {"context": None}}
    [res] = requests.post(gunicorn_url + "/predict", json=body, timeout=60).json()["results"]
    assert res["model_version"] == version
    from refseg_model.predictor import RefSegPredictor

    [exp] = RefSegPredictor.from_spec(checkpoint).predict_many(lambda k: img, [(0, "the bright block")])
    if exp.mask.any():
        region = res["result"][0]
        got = decode_rle(region["value"]["rle"]).reshape(48, 64, 4)[:, :, 3] > 0
        np.testing.assert_array_equal(got, exp.mask)
    # other projects still use the base model
    other = requests.post(gunicorn_url + "/setup", json={**setup, "project": "70.1"}).json()["model_version"]
    assert other == "tiny-test"

    metrics = requests.get(gunicorn_url + "/metrics").text
    assert 'refseg_finetune_runs_total{outcome="promoted"}' in metrics
    assert f'refseg_model_version_info{{project="{key}",version="{version}"}} 1.0' in metrics
    assert f'refseg_finetune_last_giou{{model="new",project="{key}"}}' in metrics


def test_annotation_webhooks_count_and_deduplicate(gunicorn_url, fake_ls, redis_url):
    add_annotated_project(fake_ls, 8, 800, 0)  # no annotations: runs skip
    # each run takes >= 3 s, so the triggers below provably meet a queued or running job (without the delay a
    # run that skips can finish between two POSTs, and a new trigger then rightly enqueues a fresh job)
    fake_ls.project_delay_s[8] = 3.0
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    post = lambda payload: requests.post(gunicorn_url + "/webhook", json=payload, timeout=5)  # noqa: E731

    outcomes = [post(_annotation_event("ANNOTATION_CREATED", 8, i)).json()["finetune"] for i in range(2)]
    assert outcomes == ["not-due", "not-due"]  # TRAIN_EVERY_N_ANNOTATIONS=3
    third = post(_annotation_event("ANNOTATION_UPDATED", 8, 3)).json()["finetune"]
    assert third == "enqueued"
    again = [post({"action": "START_TRAINING", "project": project_obj(8)}).json()["finetune"] for _ in range(3)]
    assert set(again) <= {"already-queued", "rerun-requested"}

    def idle():
        s = finetune_state.status(state, project_key(8, fake_ls.url))
        return s if not s["queued"] and not s["running"] and not s["rerun_requested"] else None

    wait_for(idle, 120, "fine-tune jobs of project 8 to finish", 0.3)
    ft = requests.get(gunicorn_url + "/metrics").text
    assert 'refseg_finetune_runs_total{outcome="skipped"}' in ft

    # other actions are acknowledged and ignored; cancelled annotations do not count; junk is a 400
    assert post({"action": "TASKS_DELETED", "tasks": [{"id": 1}], "project": project_obj(8)}).json()["status"] == "ignored"
    cancelled = _annotation_event("ANNOTATION_CREATED", 8)
    cancelled["annotation"]["was_cancelled"] = True
    assert post(cancelled).json()["status"] == "ignored"
    assert requests.post(gunicorn_url + "/webhook", data=b"not json", timeout=5).status_code == 400
    assert post({"action": "START_TRAINING"}).status_code == 400
