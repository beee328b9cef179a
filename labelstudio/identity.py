"""Which Label Studio, and which project in it, a request or a job belongs to.

Label Studio numbers projects 1, 2, 3, ... per installation: a fresh Label Studio (a new database, a re-install)
starts again at 1, so the bare id names a different project in each life. What tells them apart:

* the project's creation time: Label Studio sends "<id>.<created unix seconds>" to /setup and /predict
  (`ml/api_connector.py::_create_project_uid`), and the project object of webhook payloads and of
  GET /api/projects/<id> carries `created_at` (ISO 8601, the same instant);
* the Label Studio instance: LABEL_STUDIO_URL, the one this deployment downloads images from, posts late
  predictions to and pulls annotations from.

A project's state (versions, counters, markers, fine-tune state, stats, checkpoints) is keyed by both:
`<id>-<created>-<instance>`, instance = a short hash of the normalised LABEL_STUDIO_URL. The stamp alone would
let two Label Studios whose project 1 was created in the same second share a lineage; the URL alone would let a
fresh Label Studio at the same address inherit its predecessor's models. The numeric id stays what Label Studio's
API is called with.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Tuple
from urllib.parse import urlsplit

UNKNOWN = ""  # creation stamp not given (a payload without it)


def instance_id(url: str) -> str:
    """A short, stable, file-name-safe name for the Label Studio at `url` (no secrets in it: a URL hash).
    `http://LS:8080/` and `http://ls:8080` are the same instance; `http://ls` and `http://ls:80` too."""
    u = urlsplit((url or "").strip())
    scheme = (u.scheme or "http").lower()
    host = (u.hostname or "").lower()
    port = u.port or (443 if scheme == "https" else 80)
    path = u.path.rstrip("/")
    canonical = f"{scheme}://{host}:{port}{path}" if host else ""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:10]


def created_stamp(value) -> str:
    """Label Studio's creation stamp, as in "<id>.<stamp>": whole unix seconds, from an ISO 8601 `created_at`
    ("2026-05-01T10:11:12.345678Z", UTC when no zone is given) or a number."""
    if isinstance(value, bool) or value in (None, ""):
        raise ValueError("no creation time")
    if isinstance(value, (int, float)):
        return str(int(value))
    text = str(value).strip()
    if text.isdigit():
        return text
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad creation time {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return str(int(dt.timestamp()))


def parse_project(raw) -> Tuple[str, str]:
    """(id, creation stamp or UNKNOWN) from what Label Studio sends as the project: "<id>.<created ts>"
    (/setup, /predict), a webhook's project object {"id", "created_at", ...}, or a bare id."""
    created = UNKNOWN
    if isinstance(raw, dict):
        if raw.get("created_at") not in (None, ""):
            created = created_stamp(raw["created_at"])
        raw = raw.get("id")
    if isinstance(raw, bool) or raw is None:
        raise ValueError("no project id")
    pid, dot, stamp = str(raw).strip().partition(".")
    if not pid.isdigit():
        raise ValueError(f"bad project id {raw!r}")
    if dot:
        if not stamp.isdigit():
            raise ValueError(f"bad project id {raw!r} (expected <id>.<created unix time>)")
        created = stamp
    return str(int(pid)), created


@dataclass(frozen=True)
class ProjectRef:
    """A project of one Label Studio, in one life. `id` is for Label Studio's API (and RASTER_PROJECTS, version
    names); `key` names its state in Redis and under MODEL_DIR."""

    id: str
    created: str
    instance: str

    @property
    def key(self) -> str:
        return f"{self.id}-{self.created}-{self.instance}"

    @classmethod
    def from_key(cls, key: str) -> "ProjectRef":
        pid, created, instance = key.split("-", 2)
        return cls(pid, created, instance)

    def to_dict(self) -> dict:
        return {"id": self.id, "created": self.created, "instance": self.instance}

    @classmethod
    def from_job(cls, value) -> Optional["ProjectRef"]:
        """The project a job was queued for (its JSON argument); None for a job without an identity (queued by
        an older version of the backend, which keyed projects by bare id): such a job never posts or trains."""
        if isinstance(value, dict) and {"id", "created", "instance"} <= set(value):
            return cls(str(value["id"]), str(value["created"]), str(value["instance"]))
        return None

    def __str__(self) -> str:
        return f"{self.id} (created {self.created})"
