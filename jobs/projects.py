"""Which project a request names, as a key that no other Label Studio, and no re-created project, shares.

See labelstudio/identity.py for the rule. Here: the Redis side of it (the creation stamp last seen per project
id, for payloads that do not carry it; the URL an instance hash stands for, for messages).
"""
from __future__ import annotations

import logging
from typing import Optional

import redis

from labelstudio.identity import UNKNOWN, ProjectRef, instance_id, parse_project

from . import keys

log = logging.getLogger(__name__)


def register_instance(state: redis.Redis, url: str) -> str:
    """The instance hash of LABEL_STUDIO_URL `url`, recorded with its URL (best effort: Redis may be down at
    start-up; the record only improves messages)."""
    instance = instance_id(url)
    try:
        state.set(keys.instance_url(instance), url or "")
    except redis.exceptions.RedisError as exc:
        log.warning("cannot record the Label Studio instance %s: %s", instance, exc)
    return instance


def instance_url(state: redis.Redis, instance: str) -> Optional[str]:
    """The LABEL_STUDIO_URL that `instance` stands for, if a process recorded it."""
    return state.get(keys.instance_url(instance))


def describe_instance(state: redis.Redis, instance: str) -> str:
    try:
        url = instance_url(state, instance)
    except redis.exceptions.RedisError:
        url = None
    if url is None:
        return f"{instance} (URL not recorded)"
    return f"{instance} ({url or 'LABEL_STUDIO_URL not set'})"


def resolve(state: redis.Redis, instance: str, raw) -> ProjectRef:
    """The project of a request: "<id>.<created>" (/setup, /predict) or a webhook's project object with
    `created_at`. A payload without the creation time gets the stamp last seen for that id (Label Studio
    calls /setup when a backend is connected, before anything else); none known is an error (ValueError)."""
    pid, created = parse_project(raw)
    seen = keys.project_created(instance, pid)
    if created == UNKNOWN:
        created = state.get(seen) or UNKNOWN
        if created == UNKNOWN:
            raise ValueError(f"project {pid}: no creation time in the request (Label Studio sends "
                             "\"<id>.<created>\" or a project object with created_at), and none seen before")
    else:
        state.set(seen, created)
    return ProjectRef(pid, created, instance)
