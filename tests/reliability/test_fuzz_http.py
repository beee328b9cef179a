"""Property test of the request parsing through the real HTTP app: random JSON bodies to /predict, /setup and
/webhook never get a 5xx (only 2xx or a 4xx with a reason). The RLE codec's property tests (mask -> rle -> mask
identity, equality with label_studio_sdk's mask2rle, garbage streams) are in tests/test_brush.py."""
from __future__ import annotations

from backend_support import CONFIG_TEXT, CONFIG_TEXTAREA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=20))
anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=12)
KEYS = ["id", "data", "project", "image", "expression", "result", "value", "text", "type", "from_name",
        "context", "annotation", "action", "tasks", "label_config", "params", "schema"]
# images that fail fast (refused before any download, or a 404 from the fake LS): the fuzz exercises parsing
images = st.sampled_from(["", "/data/upload/99/none.png", "file:///etc/passwd", "relative.png", "ftp://x/y",
                          "data:image/png;base64,AAAA"])
tasks = st.lists(st.one_of(anything, st.fixed_dictionaries({
    "id": st.one_of(st.integers(0, 10**6), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2)),
    "data": st.one_of(anything, st.fixed_dictionaries({"image": st.one_of(images, anything),
                                                       "expression": st.one_of(st.text(max_size=30), anything)}))})),
    max_size=3)
contexts = st.one_of(st.none(), anything, st.fixed_dictionaries({"result": st.one_of(anything, st.lists(
    st.one_of(anything, st.fixed_dictionaries({"type": st.just("textarea"), "from_name": st.text(max_size=6),
                                               "value": st.one_of(anything, st.fixed_dictionaries(
                                                   {"text": st.one_of(anything, st.lists(st.text(max_size=9)))}))})),
    max_size=3))}))
projects = st.one_of(st.sampled_from(["31.1712345678", "31", 31, "x", "", "31.a.b"]), anything)
configs = st.one_of(st.sampled_from([CONFIG_TEXT, CONFIG_TEXTAREA, "", "<View>", "<View/>"]), anything)
predict_bodies = st.one_of(anything, st.fixed_dictionaries(
    {"tasks": st.one_of(tasks, anything), "project": projects, "label_config": configs},
    optional={"params": st.one_of(anything, st.fixed_dictionaries({"context": contexts}))}))
actions = st.one_of(st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "START_TRAINING",
                                     "PROJECT_UPDATED"]), anything)
webhook_bodies = st.one_of(anything, st.fixed_dictionaries(
    {"action": actions}, optional={"project": st.one_of(projects, st.fixed_dictionaries({"id": projects})),
                                   "annotation": st.one_of(anything, st.fixed_dictionaries(
                                       {"project": projects, "was_cancelled": anything}))}))

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def _check(stack, path, body):
    r = stack.post(path, json=body, timeout=60)
    assert r.status_code < 500, (path, body, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["error"]
    elif path == "/predict":
        results = r.json()["results"]
        assert len(results) == len(body["tasks"])  # exactly one entry per task, whatever the task is
        assert all(isinstance(x, dict) and "model_version" in x for x in results)


@FUZZ
@given(body=predict_bodies)
def test_predict_never_5xx(stack, body):
    _check(stack, "/predict", body)


@FUZZ
@given(body=webhook_bodies)
def test_webhook_never_5xx(stack, body):
    _check(stack, "/webhook", body)


@FUZZ
@given(body=st.one_of(anything, st.fixed_dictionaries({"project": projects, "schema": configs})))
def test_setup_never_5xx(stack, body):
    _check(stack, "/setup", body)


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_raw_bytes_never_5xx(stack, raw):
    for path in ("/predict", "/webhook", "/setup"):
        r = stack.post(path, data=raw, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code < 500, (path, raw, r.text)
