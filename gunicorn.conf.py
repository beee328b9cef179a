"""gunicorn settings shared by every way the backend is started (gunicorn reads ./gunicorn.conf.py by itself:
scripts/serve.sh, the Docker images and the tests all start it from the repository root).

keepalive: gunicorn closes an idle keep-alive connection after 2 s by default. Clients that keep one
`requests.Session` (Label Studio does, per process, for /predict and webhooks) and reuse it after about 2 s
idle race that close and get `RemoteDisconnected`. An idle connection is kept far longer than any client here
waits between requests, so a reused connection is never closed under the client's feet.
"""
keepalive = 75
