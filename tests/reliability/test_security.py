"""Security properties checked against the running stack (real redis-server, real workers, real gunicorn)."""
from __future__ import annotations

import os

import redis
from backend_support import wait_for
from rq import Queue
from test_bad_input import _assert_alive


class _Evil:
    """Unpickling this runs a shell command: what a pickle-based queue would execute if Redis were writable."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_workers_never_unpickle_jobs_from_redis(stack, fake_ls, tmp_path):
    marker = tmp_path / "pwned"
    conn = redis.Redis.from_url(stack.redis_url)
    # A job written with RQ's default (pickle) serializer on the queue our workers take first.
    job = Queue("interactive", connection=conn).enqueue("workers.jobs.predict_interactive", _Evil(str(marker)))
    wait_for(lambda: job.id.encode() not in conn.lrange("rq:queue:interactive", 0, -1), 30,
             "a worker to take the job off the queue", 0.2)
    # the workers are still serving: a later request is answered, so the worker is done with that job (whatever
    # loading it would have run has run)
    _assert_alive(stack, fake_ls, 7301)
    assert not marker.exists(), "a worker unpickled a job payload from Redis"


def test_basic_auth_is_required_and_compared_in_full(stack):
    import requests

    for path, method in (("/predict", "post"), ("/setup", "post"), ("/webhook", "post"), ("/metrics", "get"),
                         ("/status", "get"), ("/status.json", "get")):
        r = getattr(requests, method)(stack.url + path, json={}, timeout=10)
        assert r.status_code == 401, (path, r.status_code)
        user, password = stack.session.auth
        for wrong in ((user, password[:-1]), (user, password + "x"), (user[:-1], password), ("", "")):
            r = getattr(requests, method)(stack.url + path, json={}, auth=wrong, timeout=10)
            assert r.status_code == 401, (path, wrong, r.status_code)
    assert requests.get(stack.url + "/health", timeout=10).status_code == 200  # probes need no credentials
