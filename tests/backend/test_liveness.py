"""Worker liveness (jobs/liveness.py) against the real redis-server: a dead worker is noticed, a living one is
not declared dead in the seconds after a Redis outage wiped its key; in between, its state is undecided."""
from __future__ import annotations

import time

import redis
from backend_support import wait_for

from jobs.liveness import (
    DEAD,
    LIVE,
    UNDECIDED,
    refresh_worker_alive,
    worker_alive,
    worker_alive_key,
    worker_missing_key,
    worker_state,
)


def _seconds_until_dead(state, name: str, grace: float) -> float:
    """Seconds from now until `name` is judged dead (polled); every answer before that must be UNDECIDED."""
    t0 = time.monotonic()

    def dead():
        verdict = worker_state(state, name, grace)
        assert verdict in (UNDECIDED, DEAD), verdict
        return time.monotonic() - t0 if verdict == DEAD else None

    return wait_for(dead, 10 * grace + 5, f"{name} to be judged dead", 0.02)


def test_a_missing_key_is_believed_only_after_the_grace_period(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    name, grace = "liveness-test-a", 0.6
    refresh_worker_alive(state, name, "123")
    assert state.ttl(worker_alive_key(name)) > 0  # a dead process's key expires by itself
    assert worker_state(state, name, grace) == LIVE and worker_alive(state, name, grace)

    state.delete(worker_alive_key(name))  # e.g. Redis came back from an outage longer than the TTL
    assert worker_state(state, name, grace) == UNDECIDED  # first sighting: maybe the worker has not refreshed yet
    assert worker_alive(state, name, grace)  # undecided is not dead
    assert _seconds_until_dead(state, name, grace) >= grace - 0.05  # never judged dead within the grace
    assert not worker_alive(state, name, grace)  # and dead stays dead


def test_a_refresh_forgets_an_earlier_sighting(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    name, grace = "liveness-test-b", 0.6
    refresh_worker_alive(state, name, "1")
    state.delete(worker_alive_key(name))
    assert worker_state(state, name, grace) == UNDECIDED  # missing, first seen now
    refresh_worker_alive(state, name, "1")  # the worker reconnected and refreshed in time
    assert state.get(worker_missing_key(name)) is None
    assert worker_state(state, name, grace) == LIVE
    state.delete(worker_alive_key(name))  # a second outage: judged on its own sighting, not the first one
    assert _seconds_until_dead(state, name, grace) >= grace - 0.05


def test_a_worker_never_seen_gets_the_same_grace(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    assert _seconds_until_dead(state, "liveness-test-never", 0.3) >= 0.25
