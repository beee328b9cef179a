"""Webhooks -> one fine-tune job per project -> new version in Redis -> /setup and the workers serve it."""
from __future__ import annotations

import time

import numpy as np
import redis
import requests
from backend_support import CONFIG_TEXT, add_annotated_project, png, project_key, project_obj, scene, uid, wait_for
from label_studio_sdk.converter.brush import decode_rle

from jobs import finetune_state, stats


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
    # trained with simulated clicks on part of each batch (FINETUNE_INTERACTIVE_FRAC, default 0.5), as recorded
    from refseg_model.checkpoint import read_checkpoint_meta

    assert read_checkpoint_meta(checkpoint)["metadata"]["train"]["interactive_frac"] == 0.5
    # the report also scores one simulated corrective click on the held-out tasks, for both versions
    st = stats.finetune_status(state)[key]
    assert 0.0 <= st["click_iou_new"] <= 1.0 and 0.0 <= st["click_iou_current"] <= 1.0, st
    assert f"IoU after one click {st['click_iou_new']:.4f} vs {st['click_iou_current']:.4f}" in st["verdict"], st

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


def _promoted_version(url: str, project: str, before: str, timeout: float = 240) -> str:
    def promoted():
        v = requests.post(url + "/setup", json={"project": project, "schema": CONFIG_TEXT}, timeout=5).json()[
            "model_version"]
        return v if v != before else None

    return wait_for(promoted, timeout, f"a version after {before}", 0.5)


def test_a_second_finetune_trains_from_the_first_ones_checkpoint(gunicorn_url, fake_ls, redis_url):
    import json
    from pathlib import Path

    project = add_annotated_project(fake_ls, 97, 9700, 4)
    key = project_key(97, fake_ls.url)
    train = {"action": "START_TRAINING", "project": project_obj(97)}
    assert requests.post(gunicorn_url + "/webhook", json=train, timeout=5).json()["finetune"] == "enqueued"
    first = _promoted_version(gunicorn_url, project, "tiny-test")
    assert requests.post(gunicorn_url + "/webhook", json=train, timeout=5).json()["finetune"] == "enqueued"
    second = _promoted_version(gunicorn_url, project, first)
    assert (first, second) == ("tiny-test-p97-ft1", "tiny-test-p97-ft2")

    # lineage in Redis: ft2's parent is ft1, whose parent is the base model
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    history = [json.loads(x) for x in state.lrange(f"refseg:project:{key}:history", 0, -1)]
    assert [(h["version"], h["parent"]) for h in history] == [(second, first), (first, "tiny-test")]
    assert state.hget(f"refseg:project:{key}:model", "parent") == first
    # and on disk: both checkpoints under MODEL_DIR/<key>/, ft2 trained from ft1's weights
    ckpt1, ckpt2 = Path(history[1]["checkpoint"]), Path(history[0]["checkpoint"])
    assert ckpt1.parent == ckpt2.parent and ckpt1.parent.name == key and ckpt1.is_dir() and ckpt2.is_dir()
    meta2 = json.loads((ckpt2 / "config.json").read_text())["metadata"]
    assert meta2["base"] == first and Path(meta2["train"]["init"]) == ckpt1
    meta1 = json.loads((ckpt1 / "config.json").read_text())["metadata"]
    assert meta1["base"] == "tiny-test"


def test_a_trigger_that_meets_an_undecided_job_is_rechecked_and_trains(gunicorn_url, fake_ls, redis_url):
    """The project's `running` marker names a started fine-tune whose worker nobody has heard from (its
    liveness key missing: a crash, or a worker that has not refreshed since a Redis restart). For the first 8 s
    its liveness is undecided: the trigger is not dropped but re-checked by a job, which trains once the job is
    judged dead."""
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    from labelstudio.identity import ProjectRef

    project = add_annotated_project(fake_ls, 98, 9800, 4)
    key = project_key(98, fake_ls.url)
    rq_conn = redis.Redis.from_url(redis_url)
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    ghost = Job.create("workers.jobs.finetune_project", kwargs={"project": ProjectRef.from_key(key).to_dict()},
                       connection=rq_conn, serializer=JSONSerializer, id=f"finetune-{key}-ghost")
    ghost.worker_name = "ghost-worker-98"  # never refreshed a liveness key
    ghost.save()
    ghost.set_status(JobStatus.STARTED)
    state.set(f"refseg:project:{key}:train:running", ghost.id, ex=600)

    train = {"action": "START_TRAINING", "project": project_obj(98)}
    r = requests.post(gunicorn_url + "/webhook", json=train, timeout=5)
    assert r.status_code == 201 and r.json()["finetune"] == "recheck-scheduled", r.text
    version = _promoted_version(gunicorn_url, project, "tiny-test")
    assert version == "tiny-test-p98-ft1"
    assert state.get(f"refseg:project:{key}:train:running") is None


def test_a_project_whose_masks_have_no_expression_is_skipped_with_the_reason(gunicorn_url, fake_ls, redis_url):
    """A label config that takes the expression from the task (<Text value="$expression">), on tasks that have
    none: the masks cannot be paired with their text, the run is skipped, and its reason counts them by kind
    instead of only saying "0 usable"."""
    add_annotated_project(fake_ls, 11, 1100, 3)
    for tid in (1100, 1101, 1102):
        del fake_ls.tasks[tid]["data"]["expression"]
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    r = requests.post(gunicorn_url + "/webhook", json={"action": "START_TRAINING", "project": project_obj(11)},
                      timeout=5)
    assert r.json()["finetune"] == "enqueued"
    key = project_key(11, fake_ls.url)

    def skipped():
        st = stats.finetune_status(state).get(key, {})
        return st if st.get("state") == "skipped" else None

    st = wait_for(skipped, 120, "project 11's fine-tune to be skipped", 0.3)
    assert "0 usable annotated task(s)" in st["reason"] and "skipped: 3 no referring expression" in st["reason"]
    assert "TextArea" in st["reason"], st["reason"]


def test_a_clicks_only_project_finetunes_and_is_judged_on_clicks(gunicorn_url, fake_ls, redis_url):
    """A label config without Text/TextArea (SAM's click tool beside the brush): its masks train the click path
    (expression "", from clicks or a box only), and new and current versions are compared on the held-out IoU
    after one simulated click, since there is no text to score."""
    from click_configs import CLICKS_ONLY

    add_annotated_project(fake_ls, 12, 1200, 4, config=CLICKS_ONLY)
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    r = requests.post(gunicorn_url + "/webhook", json={"action": "START_TRAINING", "project": project_obj(12)},
                      timeout=5)
    assert r.json()["finetune"] == "enqueued"
    version = _promoted_version(gunicorn_url, uid(12), "tiny-test")
    assert version == "tiny-test-p12-ft1"
    st = stats.finetune_status(state)[project_key(12, fake_ls.url)]
    assert st["state"] == "promoted" and st["samples"] == 4, st
    assert st["giou_new"] is None and st["giou_current"] is None  # nothing to score as text
    assert 0.0 <= st["click_iou_new"] <= 1.0 and 0.0 <= st["click_iou_current"] <= 1.0, st
    assert st["verdict"].startswith(f"held-out IoU after one click (no expressions) {st['click_iou_new']:.4f} vs "
                                    f"{st['click_iou_current']:.4f} for tiny-test"), st["verdict"]
