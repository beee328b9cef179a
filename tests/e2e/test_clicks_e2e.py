"""Clicks and boxes of Label Studio's smart tools through Label Studio's own API
(POST /api/ml/{id}/interactive-annotating), on the session's real Label Studio 1.23.2 and backend.

The regions have the shape Label Studio 1.23.2's editor sends (web/dist source maps: KeyPointRegion.serialize,
Image.createSerializedResult, Result.serialize, DataManager.jsx "lsf:regionFinishedDrawing"):

    {"id": "kp1", "type": "keypointlabels", "from_name": "click", "to_name": "image", "origin": "manual",
     "original_width": W, "original_height": H, "image_rotation": 0, "is_positive": true,
     "value": {"x": %, "y": %, "width": %, "keypointlabels": ["object"], "labels": ["object"]}}

`is_positive` sits on the region, not in `value` (false for an alt-click); `value.labels` is added for smart
regions. A rectangle's value is {x, y, width, height, rotation, rectanglelabels}. Label Studio passes `context`
to /predict unchanged (ml/api.py: a JSONField). Seen in headless Chromium (Auto-Annotation on, the Auto-Detect
tool, label "object", one click on a 128 px image right after the text "the tank" had been typed and sent):

    {"task": 1, "context": {"result": [{"original_width": 128, "original_height": 128, "image_rotation": 0,
     "value": {"x": 18.906249999999993, "y": 22.031249999999993, "width": 0.33444816053511706,
               "labels": ["object"], "keypointlabels": ["object"]},
     "is_positive": true, "id": "TTkBO8Zrdm", "from_name": "click", "to_name": "image", "type": "keypointlabels",
     "origin": "manual"}]}}

The editor's context holds the regions "connected" to the one just drawn (Regions.getConnectedDynamicRegions:
the same region type, label and image): a click sends the keypoints of its label so far and no TextArea text,
and the typed text comes in a request of its own. The backend remembers the text typed for a task
(jobs.typed_expressions) and combines the clicks that follow with it; before anything is typed, or once the
TextArea is cleared, with the task's <Text>. A context with a textarea item and clicks together only comes
through the API.

Every answer must decode to exactly the mask the in-process predictor (same checkpoint, one thread) gives for
the same prompts in the same order: the backend feeds the answer to the request without its last click back
as the mask input, so the in-process side replays the requests with its own AnswerMemory.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import requests
from click_configs import CLICKS_ONLY, readme_config
from e2e_flow import connect, create_project, created_stamp, decode

from labelstudio.labelconfig import parse_label_config

pytestmark = pytest.mark.e2e
TYPED = "the large building"  # what the annotator types into the TextArea (differs from the task's expression)


@pytest.fixture(scope="module")
def mirror():
    """The in-process side of the worker's answer memory (only these tests send clicks on these images)."""
    from refseg_model.predictor import AnswerMemory

    return AnswerMemory()


def _project(ls, backend_url, docroot, sample, title, config) -> dict:
    p = create_project(ls, title, [sample], docroot / "ds", config=config)
    p["ml"] = connect(ls, p["id"], backend_url)["id"]
    [p["task"]] = p["tasks"]
    return p


@pytest.fixture(scope="module")
def readme_project(label_studio, backend_url, docroot, synth_samples):
    """A project with the README's click config (Text + TextArea + smart KeyPointLabels and RectangleLabels)."""
    cfg = parse_label_config(readme_config())
    assert cfg.keypoint_name and cfg.rectangle_name and cfg.textarea_name and cfg.text_key, cfg
    return _project(label_studio, backend_url, docroot, synth_samples[-2], "refseg-e2e-clicks", readme_config())


@pytest.fixture(scope="module")
def clicks_only_project(label_studio, backend_url, docroot, synth_samples):
    """A project without Text or TextArea: a plain SAM click tool."""
    return _project(label_studio, backend_url, docroot, synth_samples[-1], "refseg-e2e-clicks-only", CLICKS_ONLY)


# ------------------------------------------------------------------------------------------- regions (editor)
def _pixel(sample, inside: bool, k: int = 0):
    """A pixel (col, row) inside / outside the sample's ground-truth mask, chosen deterministically."""
    rows, cols = np.nonzero(sample["mask"] if inside else ~sample["mask"])
    i = (len(rows) // 2 + 37 * k) % len(rows)
    return int(cols[i]), int(rows[i])


def _size(sample):
    h, w = sample["image"].shape[:2]
    return w, h


def keypoint(sample, col, row, positive=True, rid="kp", label="object"):
    w, h = _size(sample)
    return {"id": rid, "type": "keypointlabels", "from_name": "click", "to_name": "image", "origin": "manual",
            "original_width": w, "original_height": h, "image_rotation": 0, "is_positive": positive,
            "value": {"x": 100 * (col + 0.5) / w, "y": 100 * (row + 0.5) / h, "width": 0.625,
                      "keypointlabels": [label], "labels": [label]}}


def rectangle(sample, x0, y0, x1, y1, rid="box1", label="object"):
    """A box over pixels x0..x1-1, y0..y1-1."""
    w, h = _size(sample)
    return {"id": rid, "type": "rectanglelabels", "from_name": "box", "to_name": "image", "origin": "manual",
            "original_width": w, "original_height": h, "image_rotation": 0,
            "value": {"x": 100 * x0 / w, "y": 100 * y0 / h, "width": 100 * (x1 - x0) / w,
                      "height": 100 * (y1 - y0) / h, "rotation": 0, "rectanglelabels": [label]}}


def textarea(text: str):
    return {"id": "prompt1", "type": "textarea", "from_name": "prompt", "to_name": "image", "origin": "manual",
            "value": {"text": [text]}}


def _prompts(items):
    """Points [(x, y, positive)] and the box in original pixels: percent of original_width/height."""
    points, box = [], None
    for it in items:
        v = it["value"]
        if it["type"] == "keypointlabels":
            points.append((v["x"] / 100 * it["original_width"], v["y"] / 100 * it["original_height"],
                           it["is_positive"]))
        elif it["type"] == "rectanglelabels":
            w, h = it["original_width"], it["original_height"]
            box = (v["x"] / 100 * w, v["y"] / 100 * h, (v["x"] + v["width"]) / 100 * w,
                   (v["y"] + v["height"]) / 100 * h)
    return points, box


def _ask(ls, project, items):
    t0 = time.monotonic()
    r = ls.post(f"/api/ml/{project['ml']}/interactive-annotating",
                json={"task": project["task"], "context": {"result": items}})
    return r, time.monotonic() - t0


def _check(ls, project, items, expression, local_model, mirror) -> np.ndarray:
    """Send `items` through LS; the answer must be one brush region with exactly the in-process mask."""
    sample = project["tasks"][project["task"]]
    r, seconds = _ask(ls, project, items)
    assert "data" in r and "errors" not in r, r
    [region] = r["data"]["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"]) == _size(sample)
    mask = decode(region)
    points, box = _prompts(items)
    exp = local_model.predict_sequence(sample["image"], expression, points, box, memory=mirror)
    np.testing.assert_array_equal(mask, exp.mask)
    assert abs(r["data"]["score"] - exp.score) < 1e-4
    kinds = "+".join(sorted({("neg" if it.get("is_positive") is False else "") + it["type"] for it in items}))
    print(f"\n[e2e] interactive {kinds} ({len(items)} regions): {int(mask.sum())} px in {seconds:.2f} s")
    return mask


# ---------------------------------------------------------------------------------------------------- tests
def test_interactive_text_and_clicks_through_label_studio(label_studio, readme_project, local_model, mirror):
    """Typed text, then text + a positive click, then text + that click + a negative (alt-)click."""
    ls, p = label_studio, readme_project
    sample = p["tasks"][p["task"]]
    text_only = _check(ls, p, [textarea(TYPED)], TYPED, local_model, mirror)
    pos = keypoint(sample, *_pixel(sample, inside=True), rid="kp1")
    neg = keypoint(sample, *_pixel(sample, inside=False), positive=False, rid="kp2")
    one = _check(ls, p, [textarea(TYPED), pos], TYPED, local_model, mirror)
    assert not np.array_equal(one, text_only), "a positive click did not change the answer: dropped on the way?"
    two = _check(ls, p, [textarea(TYPED), pos, neg], TYPED, local_model, mirror)
    assert not np.array_equal(two, one), "a negative click (is_positive: false) did not change the answer"


def test_interactive_clicks_as_the_editor_sends_them(label_studio, readme_project, local_model, mirror):
    """The editor's requests: the typed text alone, then a click with the keypoints only (no TextArea item): the
    clicks are combined with what was typed for the task."""
    ls, p = label_studio, readme_project
    sample = p["tasks"][p["task"]]
    _check(ls, p, [textarea(TYPED)], TYPED, local_model, mirror)
    pos = keypoint(sample, *_pixel(sample, inside=True, k=1), rid="kp1")
    neg = keypoint(sample, *_pixel(sample, inside=False, k=1), positive=False, rid="kp2")
    one = _check(ls, p, [pos], TYPED, local_model, mirror)
    two = _check(ls, p, [pos, neg], TYPED, local_model, mirror)
    assert not np.array_equal(two, one), "the negative click did not change the answer"


def test_interactive_smart_rectangle(label_studio, readme_project, local_model, mirror):
    """A box drawn with the smart RectangleLabels around the object (its ground-truth extent) with the typed
    text, then with the TextArea cleared: the task's own expression."""
    ls, p = label_studio, readme_project
    sample = p["tasks"][p["task"]]
    rows, cols = np.nonzero(sample["mask"])
    box = rectangle(sample, int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    typed = _check(ls, p, [textarea(TYPED), box], TYPED, local_model, mirror)
    boxed = _check(ls, p, [textarea(""), box], sample["expression"], local_model, mirror)
    assert not np.array_equal(boxed, typed), "the typed text did not change the boxed answer"


def test_interactive_clicks_on_a_config_without_text(label_studio, clicks_only_project, local_model, mirror):
    """No Text, no TextArea: clicks alone, as a SAM click tool."""
    ls, p = label_studio, clicks_only_project
    sample = p["tasks"][p["task"]]
    pos = keypoint(sample, *_pixel(sample, inside=True), rid="kp1")
    neg = keypoint(sample, *_pixel(sample, inside=False), positive=False, rid="kp2")
    one = _check(ls, p, [pos], None, local_model, mirror)
    assert one.any()
    two = _check(ls, p, [pos, neg], None, local_model, mirror)
    assert not np.array_equal(two, one), "the negative click did not change the answer"


def test_interactive_bad_click_gives_an_error_not_a_mask(label_studio, readme_project, backend_url):
    """A click outside the image (x = 150 %): the backend answers 400 with the reason; Label Studio turns that
    into {"errors": ["400 Client Error: BAD REQUEST for url: <backend>/predict"]} (it drops the body)."""
    ls, p = label_studio, readme_project
    sample = p["tasks"][p["task"]]
    bad = keypoint(sample, 1, 1, rid="kp1")
    bad["value"]["x"] = 150.0
    r, _ = _ask(ls, p, [textarea(TYPED), bad])
    assert "data" not in r, f"a mask for a click outside the image: {r}"
    [error] = r["errors"]
    assert "400" in error and backend_url + "/predict" in error, error
    print(f"\n[e2e] a click at x=150 through Label Studio: {r}")
    # the reason the backend gave (what a direct caller of /predict sees)
    direct = requests.post(backend_url + "/predict", timeout=30, json={
        "tasks": [{"id": p["task"], "data": {"image": sample["url"], "expression": sample["expression"]}}],
        "project": f"{p['id']}.{created_stamp(ls, p['id'])}", "label_config": readme_config(),
        "params": {"context": {"result": [bad]}}})
    assert direct.status_code == 400 and "outside 0-100" in direct.json()["error"], direct.text
