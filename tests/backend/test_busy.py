"""The web process keeps answering while the workers are busy: an interactive request jumps a 200-task batch
backlog (workers take the interactive queue first), and /health and /setup stay within Label Studio's limits
(1 s and 3 s) while the inference worker and the trainer both run jobs."""
from __future__ import annotations

import contextlib
import threading
import time

import redis
import requests
from backend_support import (
    CONFIG_TEXT,
    CONFIG_TEXTAREA,
    add_annotated_project,
    iso,
    png,
    project_obj,
    scene,
    uid,
    wait_for,
)
from rq import Queue, Worker

from jobs.queues import BATCH


@contextlib.contextmanager
def batch_backlog(url: str, fake_ls, redis_url: str, project: int, n: int = 200, delay_s: float = 0.1):
    """A "Retrieve predictions" of `n` tasks whose images take `delay_s` each to download: the inference worker
    has minutes of batch jobs queued. Yields while the backlog is queued; empties the queue afterwards."""
    fake_ls.add_project(project, CONFIG_TEXT, iso(1))
    prefix = f"/data/upload/{project}/slow/"
    img = png(scene(project)[0])
    tasks = []
    for k in range(n):
        fake_ls.files[f"{prefix}{k}.png"] = img
        tasks.append({"id": project * 1000 + k, "data": {"image": f"{prefix}{k}.png", "expression": "the block"}})
    fake_ls.file_delay_prefix[prefix] = delay_s
    rq_conn = redis.Redis.from_url(redis_url)
    body = {"tasks": tasks, "project": f"{project}.1", "label_config": CONFIG_TEXT, "params": {"context": None}}
    out = {}
    asker = threading.Thread(target=lambda: out.setdefault("r", requests.post(url + "/predict", json=body,
                                                                              timeout=120)))
    asker.start()
    try:
        wait_for(lambda: Queue(BATCH, connection=rq_conn).count >= n // 4, 30, "the batch jobs to be queued")
        yield rq_conn
    finally:
        Queue(BATCH, connection=rq_conn).empty()  # the waiting /predict reports them as lost and answers
        fake_ls.file_delay_prefix.pop(prefix, None)
        asker.join(120)
    assert out["r"].status_code == 200 and len(out["r"].json()["results"]) == n


def test_an_interactive_request_is_answered_while_200_batch_tasks_are_queued(gunicorn_url, fake_ls, redis_url):
    img, _ = scene(8801)
    fake_ls.files["/data/upload/88/prompt.png"] = png(img)
    task = {"id": 8801, "data": {"image": "/data/upload/88/prompt.png"}}
    context = {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image",
                           "value": {"text": ["the white roof"]}}]}
    body = {"tasks": [task], "project": uid(88), "label_config": CONFIG_TEXTAREA, "params": {"context": context}}
    with batch_backlog(gunicorn_url, fake_ls, redis_url, 89) as rq_conn:
        queued_before = Queue(BATCH, connection=rq_conn).count
        t0 = time.monotonic()
        r = requests.post(gunicorn_url + "/predict", json=body, timeout=60)
        seconds = time.monotonic() - t0
        queued_after = Queue(BATCH, connection=rq_conn).count
    [res] = r.json()["results"]
    assert "result" in res and not res.get("error"), res
    assert queued_after > 0, "the backlog had drained: the test proves nothing"
    # the backlog holds >= 50 jobs of >= 0.2 s each: behind it the answer would take over 10 s
    assert seconds < 10, f"interactive answer after {seconds:.1f} s with {queued_before} batch jobs queued"


def test_health_and_setup_stay_fast_while_every_worker_is_busy(gunicorn_url, fake_ls, redis_url):
    add_annotated_project(fake_ls, 87, 8700, 0)
    fake_ls.project_delay_s[87] = 20.0  # the trainer's job hangs in its first call to Label Studio
    r = requests.post(gunicorn_url + "/webhook", json={"action": "START_TRAINING", "project": project_obj(87)},
                      timeout=5)
    assert r.json()["finetune"] == "enqueued", r.text
    try:
        with batch_backlog(gunicorn_url, fake_ls, redis_url, 86) as rq_conn:
            def all_busy():
                workers = Worker.all(connection=rq_conn)
                return len(workers) >= 2 and all(w.get_current_job_id() for w in workers)

            wait_for(all_busy, 30, "every worker to be running a job", 0.1)
            health, setup = [], []
            for _ in range(20):
                t0 = time.monotonic()
                assert requests.get(gunicorn_url + "/health", timeout=5).status_code == 200
                health.append(time.monotonic() - t0)
                t0 = time.monotonic()
                s = requests.post(gunicorn_url + "/setup", json={"project": uid(87), "schema": CONFIG_TEXT}, timeout=5)
                assert s.status_code == 200
                setup.append(time.monotonic() - t0)
                time.sleep(0.1)  # pacing, like Label Studio's health checks
            assert all_busy(), "a worker went idle during the measurement: the test proves nothing"
    finally:
        fake_ls.project_delay_s.pop(87, None)
    assert max(health) < 1.0, f"/health took up to {max(health):.2f} s (Label Studio gives up at 1 s)"
    assert max(setup) < 3.0, f"/setup took up to {max(setup):.2f} s (Label Studio gives up at 3 s)"
