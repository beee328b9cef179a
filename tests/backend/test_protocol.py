"""HTTP protocol details: /health, /setup errors, basic auth, /metrics; the web process stays torch-free."""
from __future__ import annotations

import base64
import subprocess
import sys

import pytest
import requests
from backend_support import CONFIG_TEXT, CONFIG_TEXTAREA


def test_health_and_root(gunicorn_url):
    for path in ("/health", "/"):
        r = requests.get(gunicorn_url + path, timeout=1)
        assert r.status_code == 200
        assert r.json()["status"] == "UP" and r.json()["model_class"] == "RefSegBackend"


def test_setup_accepts_servable_configs_and_rejects_others(gunicorn_url):
    ok = requests.post(gunicorn_url + "/setup", json={"project": "11.1712345678", "schema": CONFIG_TEXTAREA,
                                                      "hostname": "http://127.0.0.1:8080", "access_token": "t",
                                                      "extra_params": None}, timeout=3)
    assert ok.status_code == 200 and ok.json() == {"model_version": "tiny-test"}
    bad = {
        "no control": '<View><Image name="image" value="$image"/><Text name="t" value="$e"/></View>',
        "no labels": '<View><Image name="image" value="$image"/><Text name="t" value="$e"/>'
                     '<BrushLabels name="m" toName="image"></BrushLabels></View>',
        "no expression": '<View><Image name="image" value="$image"/>'
                         '<BrushLabels name="m" toName="image"><Label value="a"/></BrushLabels></View>',
        "rectangles": '<View><Image name="image" value="$image"/><Text name="t" value="$e"/>'
                      '<RectangleLabels name="m" toName="image"><Label value="a"/></RectangleLabels></View>',
        "not xml": "<View><Image",
        "empty": "",
    }
    for why, schema in bad.items():
        r = requests.post(gunicorn_url + "/setup", json={"project": "11.1", "schema": schema}, timeout=3)
        assert r.status_code == 400, why
        assert r.json()["error"], why
    assert requests.post(gunicorn_url + "/setup", json={"schema": CONFIG_TEXT}).status_code == 400  # no project
    r = requests.post(gunicorn_url + "/predict", json={"tasks": [], "project": "1.1", "label_config": CONFIG_TEXT})
    assert r.status_code == 400


def test_basic_auth(threaded_app):
    app = threaded_app(BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="s3cret:with colon")
    assert requests.get(app.url + "/health", timeout=2).status_code == 200  # probes need no credentials
    body = {"project": "1.1", "schema": CONFIG_TEXT}
    r = requests.post(app.url + "/setup", json=body, timeout=2)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.post(app.url + "/setup", json=body, auth=("ls", "wrong"), timeout=2).status_code == 401
    assert requests.post(app.url + "/setup", json=body, auth=("LS", "s3cret:with colon"), timeout=2).status_code == 401
    bogus = {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe").decode()}
    assert requests.post(app.url + "/setup", json=body, headers=bogus, timeout=2).status_code == 401
    assert requests.post(app.url + "/setup", json=body, auth=("ls", "s3cret:with colon"), timeout=2).status_code == 200
    # the way LS's project webhook carries it: a header set on the webhook
    header = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret:with colon").decode()}
    r = requests.post(app.url + "/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}, headers=header)
    assert r.status_code == 200


def test_metrics(gunicorn_url):
    requests.get(gunicorn_url + "/health")
    text = requests.get(gunicorn_url + "/metrics", timeout=3).text
    assert 'refseg_http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'refseg_queue_depth{queue="interactive"}' in text
    assert 'refseg_workers{queue="batch"}' in text
    assert 'refseg_model_version_info{project="base",version="tiny-test"} 1.0' in text
    assert "refseg_redis_up 1.0" in text


def test_settings_hide_secrets():
    from jobs.settings import Settings

    s = Settings.from_env({"LABEL_STUDIO_API_KEY": "tok-123", "BASIC_AUTH_PASS": "pw-456", "BASIC_AUTH_USER": "u"})
    assert "tok-123" not in repr(s) and "pw-456" not in repr(s)
    assert "tok-123" not in str(s.public_dict()) and s.basic_auth_enabled


def test_click_zoom_setting_is_checked_at_start():
    from jobs.settings import Settings

    assert Settings.from_env({}).click_zoom == "auto" and Settings.from_env({"CLICK_ZOOM": "Off"}).click_zoom == "off"
    with pytest.raises(ValueError, match="CLICK_ZOOM='sometimes': expected one of auto, on, off"):
        Settings.from_env({"CLICK_ZOOM": "sometimes"})


def test_web_process_never_imports_torch():
    code = ("import sys; from backend.app import create_app; from jobs.settings import Settings; "
            "create_app(Settings()); import _wsgi; "
            "assert 'torch' not in sys.modules and 'refseg_model.predictor' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
