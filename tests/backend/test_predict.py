"""/predict through the real app, Redis and RQ workers: batch, interactive, polygons, failures, late results."""
from __future__ import annotations

import threading
import time

import numpy as np
import requests
from backend_support import (
    CONFIG_POLYGON,
    CONFIG_TEXT,
    CONFIG_TEXTAREA,
    check_brush_prediction,
    decode_brush,
    iso,
    png,
    project_key,
    queues_idle,
    scene,
    wait_for,
)

from backend.predict import ANSWERED_GRACE_S
from jobs.versions import VersionStore


def _add_tasks(fake_ls, project: int, first_id: int, n: int, sizes=None):
    tasks, images = [], {}
    for k in range(n):
        tid = first_id + k
        h, w = sizes[k] if sizes else (48, 64)
        img, _ = scene(tid, h, w)
        path = f"/data/upload/{project}/img{tid}.png"
        fake_ls.files[path] = png(img)
        images[tid] = img
        tasks.append({"id": tid, "project": project, "data": {"image": path, "expression": f"the bright block {k}"}})
    return tasks, images


def _expected_batch(local_predictor, tasks, images, chunk):
    """What the workers compute: predict_many over each chunk of `chunk` tasks."""
    out = []
    for s in range(0, len(tasks), chunk):
        part = tasks[s:s + chunk]
        out += local_predictor.predict_many(lambda i: images[part[i]["id"]],
                                            [(i, t["data"]["expression"]) for i, t in enumerate(part)])
    return out


def test_batch_predict_one_result_per_task_in_order(gunicorn_url, fake_ls, local_predictor):
    sizes = [(48, 64), (37, 91), (64, 64), (20, 30), (100, 75)]
    tasks, images = _add_tasks(fake_ls, 1, 100, 5, sizes)
    bad = {"id": 199, "project": 1, "data": {"image": "/data/upload/1/missing.png", "expression": "x"}}
    no_expr = {"id": 198, "project": 1, "data": {"image": tasks[0]["data"]["image"]}}
    body = {"tasks": tasks[:2] + [bad] + tasks[2:] + [no_expr], "project": "1.1712345678", "label_config": CONFIG_TEXT,
            "params": {"login": None, "password": None, "context": None}}
    r = requests.post(gunicorn_url + "/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(body["tasks"])
    setup = requests.post(gunicorn_url + "/setup", json={"project": "1.1712345678", "schema": CONFIG_TEXT}).json()
    good = [results[i] for i in (0, 1, 3, 4, 5)]
    expected = _expected_batch(local_predictor, tasks, images, chunk=2)
    for task, res, exp in zip(tasks, good, expected):
        assert setup["model_version"] == "tiny-test"
        # exactly the predictor's mask, at the original size
        check_brush_prediction(res, exp, images[task["id"]].shape[:2], "tiny-test", score_tol=1e-6)
    assert results[2]["result"] == [] and "HTTP 404" in results[2]["error"]
    assert results[6]["result"] == [] and "expression" in results[6]["error"]


def test_interactive_predict_with_textarea_context(gunicorn_url, fake_ls, local_predictor):
    tasks, images = _add_tasks(fake_ls, 3, 300, 1, [(50, 70)])
    task = {**tasks[0], "data": {"image": tasks[0]["data"]["image"]}, "annotations": [], "drafts": [],
            "predictions": []}
    context = {"result": [
        {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "value": {"x": 1, "y": 2}},
        {"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": ["the white roof"]}},
    ]}
    body = {"tasks": [task], "project": "3.1712345678", "label_config": CONFIG_TEXTAREA,
            "params": {"login": None, "password": None, "context": context}}
    t0 = time.monotonic()
    r = requests.post(gunicorn_url + "/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    [exp] = local_predictor.predict(images[300], ["the white roof"])
    assert time.monotonic() - t0 < 20
    assert res["model_version"] == "tiny-test"
    if exp.mask.any():
        np.testing.assert_array_equal(decode_brush(res["result"][0]), exp.mask)
    else:
        assert res["result"] == []


def test_interactive_request_with_an_empty_prompt_suggests_nothing(gunicorn_url, fake_ls, redis_url):
    """Label Studio sends one right after Submit: answering it with the batch suggestion offered a duplicate."""
    from jobs.connections import rq_connection
    from jobs.queues import BATCH, INTERACTIVE, get_queue

    tasks, _ = _add_tasks(fake_ls, 3, 350, 1)
    conn = rq_connection(redis_url)
    started = {q: get_queue(conn, q).started_job_registry.count + get_queue(conn, q).finished_job_registry.count
               for q in (BATCH, INTERACTIVE)}
    body = {"tasks": tasks, "project": "3.1712345678", "label_config": CONFIG_TEXT,
            "params": {"login": None, "password": None, "context": {"result": []}}}
    r = requests.post(gunicorn_url + "/predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"result": [], "score": 0.0, "model_version": "tiny-test"}]
    for q in (BATCH, INTERACTIVE):  # no job was run for it
        assert len(get_queue(conn, q)) == 0
        assert get_queue(conn, q).started_job_registry.count + get_queue(conn, q).finished_job_registry.count \
            == started[q]


def test_polygon_output(gunicorn_url, fake_ls):
    tasks, _ = _add_tasks(fake_ls, 4, 400, 2)
    body = {"tasks": tasks, "project": "4.1", "label_config": CONFIG_POLYGON, "params": {"context": None}}
    results = requests.post(gunicorn_url + "/predict", json=body, timeout=60).json()["results"]
    assert len(results) == 2
    for res in results:
        for region in res["result"]:
            assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == ["target"]
            pts = np.asarray(region["value"]["points"])
            assert pts.shape[1] == 2 and len(pts) >= 3 and pts.min() >= 0 and pts.max() <= 100


def test_refused_image_urls_fail_only_their_task(gunicorn_url, fake_ls):
    tasks, _ = _add_tasks(fake_ls, 1, 150, 1)
    odd = [{"id": 151 + k, "data": {"image": url, "expression": "x"}} for k, url in enumerate([
        "file:///etc/passwd", "http://10.1.2.3/a.png", "/data/local-files/?d=../../etc/passwd"])]
    body = {"tasks": odd + tasks, "project": "1.1", "label_config": CONFIG_TEXT, "params": {"context": None}}
    results = requests.post(gunicorn_url + "/predict", json=body, timeout=60).json()["results"]
    assert len(results) == 4
    assert "scheme" in results[0]["error"]
    assert "MEDIA_ALLOWED_HOSTS" in results[1]["error"]
    assert "error" in results[2]  # no LOCAL_FILES_DOCUMENT_ROOT: fetched from (fake) LS, which has no such file
    assert "error" not in results[3]


def workers_redis(app):
    import redis

    return redis.Redis.from_url(app.app.config["SETTINGS"].redis_url)


def test_concurrent_requests_for_a_task_store_one_prediction(threaded_app, workers, fake_ls, tiny_checkpoint):
    """Label Studio asks for a task without predictions from its Data Manager list and from the task view at
    once, and stores every answer: the request that comes while the first one's job runs answers "pending" (no
    `result`: LS stores nothing), the first answers the mask, nothing is posted late; once answered, the task is
    predicted anew on request (e.g. after its prediction was deleted in LS)."""
    app = threaded_app(PREDICT_BUDGET_S=20, BATCH_CHUNK_SIZE=1)
    fake_ls.add_project(6, CONFIG_TEXT, iso(1))
    tasks, _ = _add_tasks(fake_ls, 6, 600, 1)
    body = {"tasks": tasks, "project": "6.1", "label_config": CONFIG_TEXT, "params": {"context": None}}
    answers = {}

    def ask(name):
        answers[name] = requests.post(app.url + "/predict", json=body, timeout=60).json()["results"][0]

    fake_ls.file_delay_s = 1.0  # the first job is still running when the second request comes
    try:
        first = threading.Thread(target=ask, args=("first",))
        first.start()
        conn = workers_redis(app)
        marker = f"refseg:pending:{project_key(6, fake_ls.url, 1)}:600"
        wait_for(lambda: conn.exists(marker), 10, "the first request's in-flight marker")
        ask("second")
        first.join(60)
    finally:
        fake_ls.file_delay_s = 0.0
    assert "result" in answers["first"] and answers["first"]["model_version"] == "tiny-test", answers
    assert answers["second"].get("pending") and "result" not in answers["second"], answers
    wait_for(lambda: queues_idle(conn), 60, "the job to end")
    assert fake_ls.predictions_for([600]) == []  # delivered once, inline
    # answered inline: for a moment the marker says so, and a request that LS built before it stored the answer
    # (its other thread, seen in a real LS) answers "pending"; then the marker lapses
    assert conn.get(marker) == b"posted:tiny-test" and 0 < conn.ttl(marker) <= ANSWERED_GRACE_S
    ask("built before the answer was stored")
    assert answers["built before the answer was stored"].get("pending"), answers
    wait_for(lambda: not conn.exists(marker), ANSWERED_GRACE_S + 5, "the answered marker to lapse", 0.1)
    ask("third")  # e.g. "Retrieve predictions" after the prediction was deleted in LS
    assert "result" in answers["third"] and not answers["third"].get("pending"), answers["third"]
    wait_for(lambda: not conn.exists(marker), ANSWERED_GRACE_S + 5, "the answered marker to lapse", 0.1)

    # four requests at the same instant: one claims the task, three answer "pending"
    barrier = threading.Barrier(4)

    def burst(name):
        barrier.wait()
        ask(name)

    threads = [threading.Thread(target=burst, args=(f"burst{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = [answers[f"burst{k}"] for k in range(4)]
    assert sum("result" in a for a in got) == 1 and sum(bool(a.get("pending")) for a in got) == 3, got
    wait_for(lambda: queues_idle(conn), 60, "the burst's job to end")
    assert fake_ls.predictions_for([600]) == []

    # delivered under the old version moments ago (as a late post leaves it for 2 min), then a new version is
    # promoted: the task is predicted by the new one at once, not held back by the old delivery
    conn.set(marker, "posted:tiny-test", ex=120)
    VersionStore(conn, tiny_checkpoint).promote(project_key(6, fake_ls.url, 1), "tiny-test-p6-ft1", tiny_checkpoint,
                                                parent="tiny-test", metrics={"gIoU": 0.5})
    ask("after promotion")
    assert "result" in answers["after promotion"], answers["after promotion"]
    assert answers["after promotion"]["model_version"] == "tiny-test-p6-ft1"


def test_late_batch_results_are_posted_to_label_studio(threaded_app, workers, fake_ls):
    app = threaded_app(PREDICT_BUDGET_S=0.3, BATCH_CHUNK_SIZE=1)
    fake_ls.add_project(5, CONFIG_TEXT, iso(1))  # "5.1": late posts go to the project created at that time
    tasks, _ = _add_tasks(fake_ls, 5, 500, 12)
    body = {"tasks": tasks, "project": "5.1", "label_config": CONFIG_TEXT, "params": {"context": None}}
    fake_ls.file_delay_s = 0.25  # 12 one-task jobs on one worker take > 3 s: the 0.3 s budget cannot cover them
    t0 = time.monotonic()
    try:
        results = requests.post(app.url + "/predict", json=body, timeout=30).json()["results"]
    finally:
        fake_ls.file_delay_s = 0.0
    assert time.monotonic() - t0 < 5
    assert len(results) == 12
    pending = [t["id"] for t, r in zip(tasks, results) if r.get("pending")]
    answered = [t["id"] for t, r in zip(tasks, results) if "result" in r]
    assert pending, "the 0.3 s budget should leave some of 12 jobs unfinished"
    assert set(pending) | set(answered) == {t["id"] for t in tasks} and not set(pending) & set(answered)
    for r in results:
        if r.get("pending"):
            assert "result" not in r and r["model_version"] == "tiny-test-pending"

    # asked again while in flight, or by a request LS built just before the late post landed: placeholders
    # again, no second job, so no second prediction
    again = requests.post(app.url + "/predict", json={**body, "tasks": [t for t in tasks if t["id"] in pending]},
                          timeout=30).json()["results"]
    assert all(r.get("pending") for r in again)

    posted = wait_for(lambda: (lambda p: p if len(p) >= len(pending) else None)(fake_ls.predictions_for(pending)),
                      60, "late predictions")
    wait_for(lambda: queues_idle(workers_redis(app)), 60, "every job of both requests to end")  # no post after this
    posted = fake_ls.predictions_for([t["id"] for t in tasks])
    assert sorted(p["task"] for p in posted) == sorted(pending)  # exactly one per late task, none for the others
    for p in posted:
        assert p["model_version"] == "tiny-test"
        for region in p["result"]:
            assert decode_brush(region).shape == (48, 64)
