"""Bad input through the real HTTP app, Redis and workers: each gets a clear 4xx or a per-task error with a
reason; the workers stay alive and the next good request succeeds. Also: secrets never reach the logs."""
from __future__ import annotations

import base64
import io
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import requests
from backend_support import CONFIG_TEXT, CONFIG_TEXTAREA, STAMP, iso, png, project_obj, scene
from fake_ls import TOKEN
from PIL import Image
from rel_stack import AUTH, BlackHole

PROJECT = "21.1712345678"


def _good_task(fake_ls, tid: int, expression: str = "the bright block", project: int = 21) -> dict:
    img, _ = scene(tid)
    path = f"/data/upload/{project}/good{tid}.png"
    fake_ls.files[path] = png(img)
    return {"id": tid, "project": project, "data": {"image": path, "expression": expression}}


def _assert_alive(stack, fake_ls, tid: int) -> None:
    """The workers are still running and a good request is answered with a real prediction."""
    for name, (proc, _, log_path) in stack.workers.items():
        assert proc.poll() is None, f"worker {name} died: {log_path.read_text()[-2000:]}"
    body = {"tasks": [_good_task(fake_ls, tid)], "project": PROJECT, "label_config": CONFIG_TEXT}
    r = stack.post("/predict", json=body)
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert "error" not in res and res["model_version"] == "tiny-test", res


# ------------------------------------------------------------------------------------------ request level
def test_malformed_requests_get_4xx(stack, fake_ls):
    good_task = _good_task(fake_ls, 2100)
    no_brush = '<View><Image name="image" value="$image"/><Text name="t" value="$expression"/>' \
               '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>'
    cases = [
        ("/predict", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ("/predict", {"data": b"\xff\xfe\x00garbage"}, 400),
        ("/predict", {"json": []}, 400),
        ("/predict", {"json": "tasks"}, 400),
        ("/predict", {"json": {}}, 400),
        ("/predict", {"json": {"tasks": "x", "project": PROJECT, "label_config": CONFIG_TEXT}}, 400),
        ("/predict", {"json": {"tasks": [], "project": PROJECT, "label_config": CONFIG_TEXT}}, 400),
        ("/predict", {"json": {"tasks": [{"id": 1, "data": {}}], "label_config": CONFIG_TEXT}}, 400),  # no project
        ("/predict", {"json": {"tasks": [good_task], "project": "abc", "label_config": CONFIG_TEXT}}, 400),
        ("/predict", {"json": {"tasks": [good_task], "project": PROJECT}}, 400),  # no label config
        ("/predict", {"json": {"tasks": [good_task], "project": PROJECT, "label_config": no_brush}}, 400),
        ("/predict", {"json": {"tasks": [good_task], "project": PROJECT, "label_config": ["<View/>"]}}, 400),
        ("/predict", {"json": {"tasks": [good_task], "project": PROJECT, "label_config": {"a": 1}}}, 400),
        ("/setup", {"data": b""}, 400),
        ("/setup", {"json": {"project": PROJECT, "schema": ["x"]}}, 400),
        ("/setup", {"json": {"project": PROJECT, "schema": no_brush}}, 400),
        ("/webhook", {"data": b"not json"}, 400),
        ("/webhook", {"json": {}}, 400),
        ("/webhook", {"json": {"action": 5}}, 400),
        ("/webhook", {"json": {"action": "START_TRAINING"}}, 400),  # no project
        ("/webhook", {"json": {"action": "START_TRAINING", "project": {"id": "../etc"}}}, 400),
        ("/webhook", {"json": {"action": "ANNOTATION_CREATED", "project": [1, 2]}}, 400),
        ("/webhook", {"json": {"action": "ANNOTATION_CREATED", "annotation": "x"}}, 400),
    ]
    for path, kw, status in cases:
        r = stack.post(path, **kw)
        assert r.status_code == status, (path, kw, r.status_code, r.text)
        assert r.json()["error"], (path, kw)
    r = stack.post("/predict", json={"tasks": [good_task], "project": PROJECT, "label_config": no_brush})
    assert "BrushLabels" in r.json()["error"]

    # unknown webhook actions are acknowledged (LS retries nothing) and ignored
    for action in ("PROJECT_UPDATED", "TASKS_DELETED", "SOMETHING_NEW", "", "ß" * 300):
        r = stack.post("/webhook", json={"action": action, "project": {"id": 21}})
        assert r.status_code == 200 and r.json()["status"] == "ignored", (action, r.text)
    assert requests.post(stack.url + "/predict", json={"tasks": [good_task]}, timeout=5).status_code == 401
    assert stack.session.get(stack.url + "/predict", timeout=5).status_code == 405
    assert stack.session.get(stack.url + "/nope", timeout=5).status_code == 404
    _assert_alive(stack, fake_ls, 2101)


# ------------------------------------------------------------------------------------------ image payloads
def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb(side: int = 60_000) -> bytes:
    """A ~100-byte PNG that claims side x side 1-bit pixels (3.6 Gpx): must be refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _image_variants():
    rgb, _ = scene(77, 40, 56)
    grey = rgb[:, :, 0]
    good_png = png(rgb)
    return {
        # name: (bytes, None if it must succeed else a substring of the error)
        "16-bit": (_encode(Image.fromarray(grey.astype(np.uint16) * 257)), None),
        "single-band": (_encode(Image.fromarray(grey)), None),
        "4-band RGBA": (_encode(Image.fromarray(np.dstack([rgb, grey]))), None),
        "4-band TIFF": (_encode(Image.fromarray(np.dstack([rgb, grey])), "TIFF"), None),
        "paletted": (_encode(Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)), None),
        "1-bit": (_encode(Image.fromarray(grey > 100)), None),
        "jpeg": (_encode(Image.fromarray(rgb), "JPEG"), None),
        "corrupt": (b"\x00\x01garbage, not an image" * 10, "image"),
        "truncated png": (good_png[: len(good_png) // 2], "image"),
        "empty": (b"", "image"),
        "bomb": (_bomb(), "exceed"),
        # a real-world size (20,000 x 20,000 = 400 Mpx, within the loader's limit): refused from its header by the
        # worker's MEDIA_MAX_PIXELS before 1.1 GiB would be decoded
        "huge 20000x20000": (_bomb(20_000), "exceeds MEDIA_MAX_PIXELS"),
    }


class _Redirector:
    """An allowed host (127.0.0.1) that redirects every request to `target`."""

    def __init__(self, target: str) -> None:
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_bad_tasks_and_images_fail_only_their_task(stack, fake_ls):
    private = BlackHole("127.0.0.2")  # MEDIA_ALLOWED_HOSTS="*,127.0.0.1": 127.0.0.2 is neither named nor public
    silent = BlackHole("127.0.0.1")  # allowed by name; accepts and never answers
    redirect = _Redirector(private.url + "/metadata")
    files = stack.root / "files"
    img, _ = scene(5)
    (files / "ok.png").write_bytes(png(img))
    (stack.root / "secret.png").write_bytes(png(img))
    try:
        cases = []  # (task, None | error substring)
        tid = 2200

        def add(data, expect):
            nonlocal tid
            tid += 1
            cases.append(({"id": tid, "project": 21, "data": data}, expect))

        url = _good_task(fake_ls, 2199)["data"]["image"]
        add({"image": url}, "no referring expression")
        add({"image": url, "expression": ""}, "no referring expression")
        add({"image": url, "expression": "   \n\t"}, "no referring expression")
        add({"image": url, "expression": 12345}, "no referring expression")
        add({"image": url, "expression": "the bright block " * 600}, None)  # ~10,000 characters
        add({"image": url, "expression": "x" * 10_000}, None)
        add({"image": url, "expression": "白色屋顶的建筑"}, None)
        add({"image": url, "expression": "المبنى ذو السقف الأبيض"}, None)
        add({"image": url, "expression": "das Gebäude mit 🏠 Dach \u200b\u0000"}, None)
        add({"expression": "x"}, "no image URL")
        add({"image": 5, "expression": "x"}, "no image URL")
        add({"image": "", "expression": "x"}, "no image URL")
        add({"image": "/data/upload/21/missing.png", "expression": "x"}, "HTTP 404")
        add({"image": silent.url + "/slow.png", "expression": "x"}, "Timeout")
        add({"image": private.url + "/x.png", "expression": "x"}, "non-public")
        add({"image": redirect.url + "/x.png", "expression": "x"}, "non-public")
        add({"image": "http://127.0.0.2/latest/meta-data", "expression": "x"}, "non-public")
        add({"image": "file:///etc/passwd", "expression": "x"}, "scheme")
        add({"image": "/data/local-files/?d=../secret.png", "expression": "x"}, "outside LOCAL_FILES_DOCUMENT_ROOT")
        add({"image": "/data/local-files/?d=%2Fetc%2Fpasswd", "expression": "x"}, "outside LOCAL_FILES_DOCUMENT_ROOT")
        add({"image": "/data/local-files/?d=ok.png", "expression": "x"}, None)
        add({"image": "relative/path.png", "expression": "x"}, "relative image URL")
        for name, (data, expect) in _image_variants().items():
            path = f"/data/upload/21/{name.replace(' ', '_')}.img"
            fake_ls.files[path] = data
            add({"image": path, "expression": name}, expect)
        add({"image": "data:image/png;base64," + base64.b64encode(png(img)).decode(), "expression": "x"}, None)
        add({"image": "data:image/png;base64,!!!notbase64", "expression": "x"}, "image")
        tasks = [t for t, _ in cases] + ["not a task", None]
        body = {"tasks": tasks, "project": PROJECT, "label_config": CONFIG_TEXT, "params": {"context": None}}
        r = stack.post("/predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(tasks)
        for (task, expect), res in zip(cases, results):
            assert res["model_version"] == "tiny-test", (task, res)
            if expect is None:
                assert "error" not in res and isinstance(res["result"], list), (task["data"], res)
            else:
                assert res["result"] == [] and expect in res["error"], (task["data"], expect, res)
        assert all("error" in res for res in results[-2:])
        assert private.connections == [], "the SSRF guard let a request through to 127.0.0.2"
    finally:
        private.close()
        silent.close()
        redirect.close()
    _assert_alive(stack, fake_ls, 2299)


def test_interactive_bad_input(stack, fake_ls):
    task = _good_task(fake_ls, 2300)
    task["data"].pop("expression")

    def ask(context):
        body = {"tasks": [task], "project": PROJECT, "label_config": CONFIG_TEXTAREA, "params": {"context": context}}
        r = stack.post("/predict", json=body, timeout=30)
        assert r.status_code in (200, 400), r.text
        return r

    def textarea(text):
        return {"result": [{"type": "textarea", "from_name": "prompt", "to_name": "image", "value": {"text": text}}]}

    for text in (["白色屋顶"], ["x" * 10_000], "a plain string"):
        [res] = ask(textarea(text)).json()["results"]
        assert "error" not in res, (text, res)
    for text in ([""], ["  "], [], [None, 5]):
        [res] = ask(textarea(text)).json()["results"]
        assert "no referring expression" in res["error"], (text, res)
    # odd shapes of the context must not be a server error
    for context in ({"result": 5}, {"result": "abc"}, {"result": [5, None, "x"]},
                    {"result": [{"type": "textarea", "value": ["x"]}]},
                    {"result": [{"type": "textarea", "value": {"text": 7}}]}):
        r = ask(context)
        if r.status_code == 200:
            [res] = r.json()["results"]
            assert "error" in res or isinstance(res["result"], list)
    _assert_alive(stack, fake_ls, 2301)


# --------------------------------------------------------------------------------------------------- secrets
def test_secrets_never_logged(stack, fake_ls):
    """LOG_LEVEL=DEBUG everywhere (gunicorn too): the LS API key and the basic-auth password stay out of logs,
    after requests that use both (an LS media download, a fine-tune pulling from LS, failed logins)."""
    import json

    from backend_support import project_key, wait_for

    _assert_alive(stack, fake_ls, 2400)
    requests.post(stack.url + "/setup", json={}, auth=("ls-user", "wrong-" + AUTH[1]), timeout=5)
    fake_ls.add_project(24, CONFIG_TEXT, iso(STAMP))
    r = stack.post("/webhook", json={"action": "START_TRAINING", "project": project_obj(24)})
    assert r.status_code == 201
    key = project_key(24, fake_ls.url)
    wait_for(lambda: json.loads(stack.state().hget(f"refseg:stats:finetune:{key}", "state") or "null") in
             ("skipped", "failed", "promoted", "rejected"), 90, "the fine-tune of project 24 (pulled from LS) to end",
             0.3)
    assert any(p.startswith("/api/tasks?") and "project=24" in p for _, p in fake_ls.requests)
    logs = stack.logs()
    assert "DEBUG" in logs  # the level really is DEBUG
    encoded = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    for secret in (TOKEN, AUTH[1], encoded):
        assert secret not in logs, f"secret {secret[:4]}... found in the logs"
