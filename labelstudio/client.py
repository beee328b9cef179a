"""Label Studio REST client for the workers (LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY from the backend's env).

The key is either a legacy token (`Authorization: Token <key>`) or a Personal Access Token, a JWT refresh
token that is exchanged at /api/token/refresh/ for a short-lived access token (`Authorization: Bearer`;
access tokens live 5 minutes, so they are refreshed ahead of expiry and once more on a 401).
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Iterator, Optional
from urllib.parse import urlsplit

import requests

from .identity import created_stamp

log = logging.getLogger(__name__)
TIMEOUT = (5, 60)


class LabelStudioError(RuntimeError):
    pass


def _jwt_payload(token: str) -> Optional[dict]:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        pad = "=" * (-len(parts[1]) % 4)
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + pad))
    except (ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


class LabelStudioClient:
    def __init__(self, url: str, api_key: str, verify_ssl: bool = True) -> None:
        self.url = url.rstrip("/")
        self._key = api_key
        self.verify = verify_ssl
        self.session = requests.Session()
        self._is_pat = _jwt_payload(api_key) is not None
        self._access: Optional[str] = None
        self._access_expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show the key
        return f"LabelStudioClient({self.url!r}, key={'PAT' if self._is_pat else 'legacy'})"

    @property
    def configured(self) -> bool:
        return bool(self.url and self._key)

    @property
    def netloc(self) -> tuple:
        u = urlsplit(self.url)
        return (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80)

    # ---------------------------------------------------------------------------------------------- auth
    def auth_header(self, force_refresh: bool = False) -> dict:
        if not self.configured:
            raise LabelStudioError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set on the workers")
        if not self._is_pat:
            return {"Authorization": f"Token {self._key}"}
        with self._lock:
            if force_refresh or not self._access or time.time() > self._access_expires:
                r = self.session.post(f"{self.url}/api/token/refresh/", json={"refresh": self._key},
                                      timeout=TIMEOUT, verify=self.verify)
                if r.status_code != 200:
                    raise LabelStudioError(f"Personal Access Token refresh failed: HTTP {r.status_code}")
                self._access = r.json()["access"]
                exp = (_jwt_payload(self._access) or {}).get("exp")
                self._access_expires = (float(exp) - 30) if exp else time.time() + 240
            return {"Authorization": f"Bearer {self._access}"}

    def request(self, method: str, path_or_url: str, **kw) -> requests.Response:
        url = path_or_url if path_or_url.startswith(("http://", "https://")) else self.url + path_or_url
        kw.setdefault("timeout", TIMEOUT)
        kw.setdefault("verify", self.verify)
        headers = dict(kw.pop("headers", {}) or {})
        r = self.session.request(method, url, headers={**headers, **self.auth_header()}, **kw)
        if r.status_code == 401 and self._is_pat:
            r = self.session.request(method, url, headers={**headers, **self.auth_header(True)}, **kw)
        return r

    def _json(self, method: str, path: str, **kw):
        r = self.request(method, path, **kw)
        if r.status_code >= 400:
            raise LabelStudioError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
        return r.json() if r.content else None

    # ----------------------------------------------------------------------------------------------- API
    def project(self, project: str) -> dict:
        return self._json("GET", f"/api/projects/{project}")

    def project_created(self, project: str) -> Optional[str]:
        """The creation stamp (labelstudio.identity.created_stamp) of Label Studio's project `project` now; None if
        there is no such project (404); '' if Label Studio does not say."""
        r = self.request("GET", f"/api/projects/{project}")
        if r.status_code == 404:
            return None
        if r.status_code >= 400:
            raise LabelStudioError(f"GET /api/projects/{project}: HTTP {r.status_code} {r.text[:200]}")
        created = (r.json() or {}).get("created_at")
        return created_stamp(created) if created else ""

    def labeled_tasks(self, project: str, page_size: int = 100, labeled_only: bool = True) -> Iterator[dict]:
        """Tasks of `project` that have annotations (all tasks if not `labeled_only`), each with `annotations`."""
        page = 1
        while True:
            r = self.request("GET", "/api/tasks", params={"project": project, "page": page, "page_size": page_size,
                                                          "fields": "all"})
            if r.status_code == 404 and page > 1:  # LS answers 404 past the last page
                return
            if r.status_code >= 400:
                raise LabelStudioError(f"GET /api/tasks: HTTP {r.status_code} {r.text[:200]}")
            body = r.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            for task in tasks:
                labeled = task.get("total_annotations") or task.get("is_labeled") or task.get("annotations")
                if labeled_only and not labeled:
                    continue
                if "annotations" not in task or not isinstance(task["annotations"], list):
                    task["annotations"] = self._json("GET", f"/api/tasks/{task['id']}/annotations/")
                yield task
            total = body.get("total") if isinstance(body, dict) else None
            if len(tasks) < page_size or (total is not None and page * page_size >= total):
                return
            page += 1

    def create_prediction(self, task_id, result: list, score: float, model_version: str, project=None) -> dict:
        body = {"task": task_id, "result": result, "score": score, "model_version": model_version}
        if project is not None and str(project).isdigit():
            body["project"] = int(project)  # without it LS logs "project_id is not set for prediction"
        return self._json("POST", "/api/predictions", json=body)
