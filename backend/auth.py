"""Optional HTTP basic auth (BASIC_AUTH_USER + BASIC_AUTH_PASS) for every route except /health.

How Label Studio passes it:
  * ML backend calls (/setup, /predict, START_TRAINING /webhook): in the project's Model settings choose
    "Basic Authentication" and enter the user and password (LS API: `auth_method: "BASIC_AUTH"`,
    `basic_auth_user`, `basic_auth_pass` on POST/PATCH /api/ml).
  * Annotation webhooks (ANNOTATION_CREATED/UPDATED) come from LS's project webhook, which LS creates without
    credentials: add the header with `PATCH /api/webhooks/<id>`
    `{"headers": {"Authorization": "Basic <base64 of user:pass>"}}` (Project settings -> Webhooks in the UI).
"""
from __future__ import annotations

import base64
import hmac

from flask import Response, request

OPEN_PATHS = {"/health"}  # probes (docker healthchecks, LS's 1 s health check) need no credentials


def _matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def install_basic_auth(app, user: str, password: str) -> None:
    @app.before_request
    def _check():
        if request.path in OPEN_PATHS:
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                given_user, _, given_pass = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                given_user, given_pass = "", ""
            # both compares always run: no early exit that would time the user name
            ok_user = _matches(user, given_user)
            ok_pass = _matches(password, given_pass)
            if ok_user and ok_pass:
                return None
        return Response('{"error": "authentication required"}', 401, mimetype="application/json",
                        headers={"WWW-Authenticate": 'Basic realm="refseg-assist"'})
