"""A test double of Label Studio's REST API (the parts the workers use), on 127.0.0.1 only."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-legacy-token-0123456789"
# a Personal Access Token is a JWT refresh token; the fake accepts this one and issues "access-<n>" tokens
PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"


class FakeLabelStudio:
    def __init__(self) -> None:
        self.projects = {}  # id -> {"id", "label_config", "created_at"}
        self.tasks = {}  # id -> task dict (with "annotations")
        self.files = {}  # path (e.g. "/data/upload/1/a.png") -> bytes
        self.file_delay_s = 0.0  # a slow media server: makes "jobs still running" deterministic in tests
        self.file_delay_prefix = {}  # path prefix -> seconds: only those files are slow
        self.project_delay_s = {}  # project id -> seconds GET /api/projects/<id> takes (a fine-tune job's first call)
        self.predictions = []  # bodies POSTed to /api/predictions
        self.requests = []  # (method, path)
        self.access_tokens = set()  # issued by /api/token/refresh/; tests may clear it to simulate expiry
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code, body=None, ctype="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self):
                auth = self.headers.get("Authorization", "")
                return auth == f"Token {TOKEN}" or auth.removeprefix("Bearer ") in fake.access_tokens

            def do_GET(self):
                u = urlsplit(self.path)
                q = parse_qs(u.query)
                with fake.lock:
                    fake.requests.append(("GET", self.path))
                if not self._authorized():
                    return self._send(401, {"detail": "Authentication credentials were not provided."})
                if u.path in fake.files:
                    time.sleep(max([fake.file_delay_s] + [d for p, d in list(fake.file_delay_prefix.items())
                                                          if u.path.startswith(p)]))
                    return self._send(200, fake.files[u.path], "image/png")
                parts = u.path.strip("/").split("/")
                if parts[:2] == ["api", "projects"] and len(parts) == 3:
                    time.sleep(fake.project_delay_s.get(int(parts[2]), 0.0))
                    p = fake.projects.get(int(parts[2]))
                    return self._send(200, p) if p else self._send(404, {"detail": "Not found."})
                if u.path == "/api/tasks":
                    pid = int(q["project"][0])
                    page, size = int(q.get("page", ["1"])[0]), int(q.get("page_size", ["100"])[0])
                    tasks = [t for t in fake.tasks.values() if t["project"] == pid]
                    chunk = tasks[(page - 1) * size: page * size]
                    if page > 1 and not chunk:
                        return self._send(404, {"detail": "Invalid page."})
                    # like LS without fields=all: no annotations inline; the client fetches them per task
                    slim = [{k: v for k, v in t.items() if k != "annotations"} for t in chunk]
                    return self._send(200, {"total": len(tasks), "tasks": slim})
                if parts[:2] == ["api", "tasks"] and len(parts) == 4 and parts[3] == "annotations":
                    t = fake.tasks.get(int(parts[2]))
                    return self._send(200, t["annotations"]) if t else self._send(404, {"detail": "Not found."})
                return self._send(404, {"detail": "Not found."})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with fake.lock:
                    fake.requests.append(("POST", self.path))
                if self.path == "/api/token/refresh/":
                    if body.get("refresh") != PAT:
                        return self._send(401, {"detail": "Token is invalid or expired"})
                    with fake.lock:
                        token = f"access-{len(fake.access_tokens)}-{len(fake.requests)}"
                        fake.access_tokens.add(token)
                    return self._send(200, {"access": token})
                if not self._authorized():
                    return self._send(401, {"detail": "Authentication credentials were not provided."})
                if self.path == "/api/predictions":
                    with fake.lock:
                        fake.predictions.append(body)
                        n = len(fake.predictions)
                    return self._send(201, {"id": n, **body})
                return self._send(404, {"detail": "Not found."})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add_project(self, project: int, label_config: str, created_at: str) -> None:
        """A project as GET /api/projects/<id> shows it (`created_at`: ISO 8601, as Label Studio sends it)."""
        self.projects[project] = {"id": project, "title": f"p{project}", "label_config": label_config,
                                  "created_at": created_at}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def predictions_for(self, task_ids):
        with self.lock:
            return [p for p in self.predictions if p["task"] in set(task_ids)]
