"""Keep-alive: Label Studio keeps one requests.Session per process towards the backend. gunicorn used to close idle
connections after 2 s (its default), and a client reusing its connection at about that moment got
`RemoteDisconnected`. gunicorn.conf.py keeps idle connections 75 s: a connection reused after 1-5 s idle is
still open, and is the same connection."""
from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import requests

IDLE_S = (1.0, 2.0, 3.0, 5.0)


def test_a_connection_reused_after_1_to_5_s_idle_is_never_reset(gunicorn_url):
    u = urlsplit(gunicorn_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)  # no silent reconnects: a close shows
    conn.request("GET", "/health")
    assert conn.getresponse().read()
    sock = conn.sock
    for idle in IDLE_S:
        time.sleep(idle)  # the idle time is what is tested
        conn.request("GET", "/health")
        r = conn.getresponse()  # RemoteDisconnected here if the server closed the idle connection
        assert r.status == 200 and r.read(), idle
        assert conn.sock is sock, f"reconnected after {idle} s idle"
    conn.close()


def test_a_requests_session_keeps_its_connection(gunicorn_url):
    """What Label Studio does: a requests.Session, webhooks and /predict over one pooled connection."""
    session = requests.Session()
    event = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
    assert session.post(gunicorn_url + "/webhook", json=event, timeout=10).status_code == 200
    pools = session.get_adapter(gunicorn_url).poolmanager.pools
    [pool] = [pools[k] for k in pools.keys()]

    def local_port():  # of the pooled connection's socket: a reconnect gets another one
        [conn] = [c for c in list(pool.pool.queue) if c is not None and getattr(c, "sock", None)]
        return conn.sock.getsockname()[1]

    port = local_port()
    for idle in (2.5, 4.0):
        time.sleep(idle)
        assert session.post(gunicorn_url + "/webhook", json=event, timeout=10).status_code == 200
        # urllib3 reconnects silently when it notices a close before sending (and fails when it does not)
        assert local_port() == port, f"the connection was closed after {idle} s idle"
