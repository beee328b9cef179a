"""Worker liveness (jobs/liveness.py) against the real redis-server: a dead worker is noticed, a living one is
not declared dead in the seconds after a Redis outage wiped its key."""
from __future__ import annotations

import time

import redis

from jobs.liveness import refresh_worker_alive, worker_alive, worker_alive_key, worker_missing_key


def test_a_missing_key_is_believed_only_after_the_grace_period(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    name, grace = "liveness-test-a", 0.6
    refresh_worker_alive(state, name, "123")
    assert state.ttl(worker_alive_key(name)) > 0  # a dead process's key expires by itself
    assert worker_alive(state, name, grace)

    state.delete(worker_alive_key(name))  # e.g. Redis came back from an outage longer than the TTL
    assert worker_alive(state, name, grace)  # first sighting: maybe the worker has not refreshed yet
    time.sleep(grace / 2)
    assert worker_alive(state, name, grace)
    time.sleep(grace / 2 + 0.1)
    assert not worker_alive(state, name, grace)  # still missing after the grace: dead
    assert not worker_alive(state, name, grace)


def test_a_refresh_forgets_an_earlier_sighting(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    name, grace = "liveness-test-b", 0.6
    refresh_worker_alive(state, name, "1")
    state.delete(worker_alive_key(name))
    assert worker_alive(state, name, grace)  # missing, first seen now
    refresh_worker_alive(state, name, "1")  # the worker reconnected and refreshed in time
    assert state.get(worker_missing_key(name)) is None
    time.sleep(grace + 0.1)
    state.delete(worker_alive_key(name))  # a second outage, long after the first sighting
    assert worker_alive(state, name, grace)  # judged on its own sighting, not the stale one
    time.sleep(grace + 0.1)
    assert not worker_alive(state, name, grace)


def test_a_worker_never_seen_gets_the_same_grace(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    assert worker_alive(state, "liveness-test-never", 0.3)
    time.sleep(0.4)
    assert not worker_alive(state, "liveness-test-never", 0.3)
