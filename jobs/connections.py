"""Redis connections: one flavour for RQ (bytes), one for the service's own keys (str)."""
from __future__ import annotations

import redis


def rq_connection(url: str) -> redis.Redis:
    """Connection for RQ (bytes responses, as RQ requires)."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=30)


def state_connection(url: str) -> redis.Redis:
    """Connection for the backend's own keys (str responses)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, health_check_interval=30)
