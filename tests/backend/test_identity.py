"""Project identity (labelstudio/identity.py): a project re-created with the same id, or a project of another Label
Studio, inherits nothing; a job queued for another Label Studio, or for a project since re-created, never posts
into this one. Through the real app, Redis and workers."""
from __future__ import annotations

import pytest
import redis
import requests
from backend_support import (
    CONFIG_TEXT,
    STAMP,
    add_annotated_project,
    iso,
    png,
    project_key,
    project_obj,
    scene,
    uid,
    wait_for,
)
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs import stats
from jobs.handoff import LATE, handoff_key, pending_key, posted_marker
from jobs.queues import BATCH, enqueue_finetune, enqueue_predict, get_queue
from jobs.settings import Settings
from jobs.versions import VersionStore
from labelstudio.identity import ProjectRef, created_stamp, instance_id, parse_project
from labelstudio.labelconfig import parse_label_config

OTHER_LS = "http://127.0.0.1:9"  # another Label Studio (nothing listens there: it must never be contacted)


def test_parse_what_label_studio_sends():
    assert parse_project("7.1712345678") == ("7", "1712345678")  # /setup, /predict
    assert parse_project({"id": 7, "created_at": iso(1712345678)}) == ("7", "1712345678")  # webhooks, REST
    assert parse_project({"id": 7, "created_at": "2024-04-05T19:34:38.999999Z"}) == ("7", "1712345678")  # floor
    assert parse_project(7) == ("7", "") and parse_project("7") == ("7", "")
    assert created_stamp("2024-04-05T19:34:38") == "1712345678"  # no zone: UTC, as Label Studio stores it
    for bad in (None, "", "abc", "7.x", {"id": "../etc"}, True, [1, 2]):
        with pytest.raises(ValueError):
            parse_project(bad)
    assert instance_id("http://LS:8080/") == instance_id("http://ls:8080") != instance_id("http://ls:8081")
    assert instance_id("http://ls") == instance_id("http://ls:80") != instance_id("https://ls")
    ref = ProjectRef("7", "1712345678", instance_id("http://ls:8080"))
    assert ProjectRef.from_key(ref.key) == ref and ProjectRef.from_job(ref.to_dict()) == ref
    assert ProjectRef.from_job("7") is None  # a job of an older backend version: no identity


def _promote(redis_url, key: str, checkpoint: str, version: str) -> None:
    store = VersionStore(redis.Redis.from_url(redis_url, decode_responses=True), checkpoint)
    store.promote(key, version, checkpoint, parent="tiny-test", metrics={"gIoU": 0.5})


def _setup(url: str, project: str) -> str:
    r = requests.post(url + "/setup", json={"project": project, "schema": CONFIG_TEXT}, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def test_a_project_recreated_with_the_same_id_starts_a_fresh_lineage(gunicorn_url, fake_ls, redis_url,
                                                                      tiny_checkpoint):
    """Project 91 of this Label Studio has a fine-tuned version; a project 91 created later (a fresh Label Studio
    at the same URL, or the database reset) is served the base model, and none of the old one's markers."""
    _promote(redis_url, project_key(91, fake_ls.url), tiny_checkpoint, "tiny-test-p91-ft1")
    assert _setup(gunicorn_url, uid(91)) == "tiny-test-p91-ft1"
    assert _setup(gunicorn_url, uid(91, STAMP + 3600)) == "tiny-test"

    # a task of the old project handed over for late delivery does not make the new project's task "pending"
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    state.set(pending_key(project_key(91, fake_ls.url), 9101), posted_marker("tiny-test-p91-ft1"), ex=60)
    img, _ = scene(9101)
    fake_ls.files["/data/upload/91/a.png"] = png(img)
    task = {"id": 9101, "data": {"image": "/data/upload/91/a.png", "expression": "the bright block"}}
    body = {"tasks": [task], "label_config": CONFIG_TEXT, "params": {"context": None}}
    [old] = requests.post(gunicorn_url + "/predict", json={**body, "project": uid(91)}, timeout=60).json()["results"]
    assert old.get("pending"), old  # control: the old project still waits for its late post
    [new] = requests.post(gunicorn_url + "/predict", json={**body, "project": uid(91, STAMP + 3600)},
                          timeout=60).json()["results"]
    assert "result" in new and not new.get("pending") and new["model_version"] == "tiny-test", new

    # webhooks name the project by id and created_at: the new project's annotations count for the new project
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "result": [], "was_cancelled": False},
             "project": project_obj(91, STAMP + 3600), "task": {"id": 9101}}
    r = requests.post(gunicorn_url + "/webhook", json=event, timeout=5)
    assert r.status_code == 201 and r.json()["key"] == project_key(91, fake_ls.url, STAMP + 3600), r.text
    assert state.get(f"refseg:project:{project_key(91, fake_ls.url, STAMP + 3600)}:new_annotations") == "1"
    assert state.get(f"refseg:project:{project_key(91, fake_ls.url)}:new_annotations") is None
    # a payload without created_at: the stamp last seen in /setup or /predict for that id; none seen: refused
    no_stamp = {**event, "project": {"id": 91}}
    assert requests.post(gunicorn_url + "/webhook", json=no_stamp, timeout=5).json()["key"] == \
        project_key(91, fake_ls.url, STAMP + 3600)
    r = requests.post(gunicorn_url + "/webhook", json={**event, "project": {"id": 92}}, timeout=5)
    assert r.status_code == 400 and "creation time" in r.json()["error"]


def test_another_label_studio_inherits_nothing(gunicorn_url, threaded_app, fake_ls, redis_url, tiny_checkpoint):
    """Same Redis, same project id and creation stamp, another LABEL_STUDIO_URL: a separate lineage."""
    _promote(redis_url, project_key(93, fake_ls.url), tiny_checkpoint, "tiny-test-p93-ft4")
    other = threaded_app(LABEL_STUDIO_URL=OTHER_LS)
    assert _setup(gunicorn_url, uid(93)) == "tiny-test-p93-ft4"  # control: this Label Studio's lineage
    assert _setup(other.url, uid(93)) == "tiny-test"
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    r = requests.post(other.url + "/webhook", json={"action": "START_TRAINING", "project": project_obj(93)}, timeout=5)
    assert r.status_code == 201 and r.json()["key"] == project_key(93, OTHER_LS)
    assert state.get(f"refseg:project:{project_key(93, fake_ls.url)}:train:queued") is None


def _late_job(redis_url, project: ProjectRef, task_id: int, path: str) -> Job:
    """A batch job whose /predict has already given up (hand-off marked late): its worker delivers by posting."""
    rq_conn = redis.Redis.from_url(redis_url)
    job_id = f"predict-identity-{task_id}"
    rq_conn.set(handoff_key(job_id), LATE)
    enqueue_predict(rq_conn, BATCH, job_id, project=project, config=parse_label_config(CONFIG_TEXT).to_dict(),
                    tasks=[{"id": task_id, "image": path, "expression": "the bright block"}], request_id="x",
                    late="post")
    return Job.fetch(job_id, connection=rq_conn, serializer=JSONSerializer)


def _finished(job: Job) -> dict:
    def done():
        job.refresh()
        return job.return_value() if job.get_status() == "finished" else None

    return wait_for(done, 60, f"job {job.id}", 0.1)


def test_a_job_for_another_label_studio_or_a_recreated_project_never_posts(workers, fake_ls, redis_url):
    fake_ls.add_project(94, CONFIG_TEXT, iso(STAMP))
    for tid in (9401, 9402, 9403, 9404):
        fake_ls.files[f"/data/upload/94/{tid}.png"] = png(scene(tid)[0])
    here = instance_id(fake_ls.url)
    jobs = {
        "here": _late_job(redis_url, ProjectRef("94", str(STAMP), here), 9401, "/data/upload/94/9401.png"),
        "other LS": _late_job(redis_url, ProjectRef("94", str(STAMP), instance_id(OTHER_LS)), 9402,
                              "/data/upload/94/9402.png"),
        "re-created": _late_job(redis_url, ProjectRef("94", str(STAMP - 86400), here), 9403,
                                "/data/upload/94/9403.png"),
    }
    results = {name: _finished(job) for name, job in jobs.items()}
    assert results["here"]["delivered"] == "posted"  # control: a late result of this project is posted
    assert [p["task"] for p in fake_ls.predictions_for([9401, 9402, 9403])] == [9401]
    assert results["other LS"]["delivered"] == "refused"
    assert results["re-created"]["delivered"] == "stale"
    # the other Label Studio's job did not even fetch its image from this one
    assert not [p for _, p in fake_ls.requests if p == "/data/upload/94/9402.png"]
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    assert stats.counters(state).get("late:foreign", 0) >= 1 and stats.counters(state).get("late:stale", 0) >= 1

    # a job queued by an older backend version (project as a bare id) is refused too
    rq_conn = redis.Redis.from_url(redis_url)
    rq_conn.set(handoff_key("predict-identity-legacy"), LATE)
    get_queue(rq_conn, BATCH).enqueue_call(
        "workers.jobs.predict_tasks", job_id="predict-identity-legacy",
        kwargs={"project": "94", "config": parse_label_config(CONFIG_TEXT).to_dict(), "request_id": "x",
                "tasks": [{"id": 9404, "image": "/data/upload/94/9404.png", "expression": "x"}], "late": "post"})
    legacy = Job.fetch("predict-identity-legacy", connection=rq_conn, serializer=JSONSerializer)
    assert _finished(legacy)["delivered"] == "refused"
    assert not fake_ls.predictions_for([9402, 9403, 9404])


def test_a_finetune_for_a_recreated_project_trains_nothing(workers, fake_ls, redis_url):
    """Label Studio's project 95 now is not the one the job was queued for: its annotations are another
    lineage's, so the job is skipped with that reason and nothing is promoted."""
    add_annotated_project(fake_ls, 95, 9500, 3)
    old = ProjectRef("95", str(STAMP - 86400), instance_id(fake_ls.url))
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    rq_conn = redis.Redis.from_url(redis_url)
    enqueue_finetune(rq_conn, Settings(), old, "finetune-identity-95")
    job = Job.fetch("finetune-identity-95", connection=rq_conn, serializer=JSONSerializer)
    result = _finished(job)
    assert result["status"] == "skipped" and "re-created" in result["reason"], result
    assert state.hgetall(f"refseg:project:{old.key}:model") == {}
