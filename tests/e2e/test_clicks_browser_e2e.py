"""Clicks and a box with Label Studio's smart keypoint and rectangle tools in its own editor (headless Chromium,
every request not to 127.0.0.1 / localhost blocked), on the session's real Label Studio 1.23.2 and backend, with
the README's config.

What the annotator does: turn on Auto-Annotation (bottom bar), pick the smart keypoint tool (the toolbar's smart
group), select the "object" label and click on the object; select the label again (the editor drops it after
each region) and alt-click beside it (a negative point); accept the suggestion and submit. The editor, not the
test, writes each request: the test records what it sent to `/api/ml/{id}/interactive-annotating` and what came
back, and checks that

- the first request carries one positive keypoint at the clicked pixel, the second both keypoints (all clicks
  so far, the alt-click with `is_positive: false`);
- each answer is one brush region with exactly the in-process mask for those clicks on the task's expression
  (the backend feeds the previous answer back as mask input; the test replays the requests in order);
- after Submit the stored annotation holds the accepted mask; in this flow (clicks, nothing typed) the editor
  sends no further interactive request (tests/backend covers the answer to the empty one it may send).

With the smart rectangle tool, a box dragged around an object arrives as one rectangle region with the drag's
corners, and its answer is the in-process mask for that box. Screenshot after the second click:
$REFSEG_CLICKS_SCREENSHOT, if set.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

import numpy as np
import pytest
from browser_support import keep_screenshot, localhost_page
from click_configs import readme_config
from e2e_flow import connect, create_project, decode
from ls_editor import open_task
from test_clicks_e2e import _prompts

pytestmark = pytest.mark.e2e
VIEWPORT = {"width": 1600, "height": 1000}


def _farthest_background_pixel(mask: np.ndarray):
    """The image corner pixel farthest from the mask's centre (clear of the suggestion's on-canvas controls)."""
    rows, cols = np.nonzero(mask)
    h, w = mask.shape
    corners = [(8, 8), (w - 9, 8), (8, h - 9), (w - 9, h - 9)]  # 8 px in: the stage may clip the picture's rim
    return max(corners, key=lambda c: (c[0] - cols.mean()) ** 2 + (c[1] - rows.mean()) ** 2)


def _wait(page, predicate, what: str, timeout: float = 30.0) -> None:
    """e2e_support.wait_for, but waiting through the page: playwright delivers the page's events (the requests
    and answers recorded) only inside its own calls, not during time.sleep."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        page.wait_for_timeout(100)


@contextmanager
def smart_tool_session(ls, backend_url, docroot, sample, title: str, tool: str):
    """A project with the README's config on `sample`, its task open in the editor with Auto-Annotation on and
    the smart `tool` ("key-point-tool" / "rectangle-tool") picked. Yields (page, session): session has "sent" /
    "answers" (the editor's interactive requests and their answers, in order), "task", "log" (the page's) and
    "to_screen" ((col, row) pixel -> screen point, through the picture's box: the editor scales the image to it
    and maps the pointer through it; the drawing stage over it can be smaller, clipping the rim)."""
    project = create_project(ls, title, [sample], docroot / "ds", config=readme_config())
    # the annotation starts empty, not from the task's batch prediction: whether that prediction had arrived
    # when the editor opened would decide whether the clicks land on its region (then they select it)
    ls.api("PATCH", f"/api/projects/{project['id']}", json={"show_collab_predictions": False})
    connect(ls, project["id"], backend_url)
    [task] = project["tasks"]
    h, w = sample["mask"].shape
    session = {"sent": [], "answers": [], "task": task}

    def on_request(r):
        if "interactive-annotating" in r.url:
            session["sent"].append(json.loads(r.post_data))

    def on_response(r):
        if "interactive-annotating" in r.url:
            session["answers"].append(r.json())

    with localhost_page(VIEWPORT, fail_instead=os.environ.get("REFSEG_E2E_REQUIRE") == "1") as (page, log):
        page.on("request", on_request)
        page.on("response", on_response)
        open_task(page, ls, project["id"], task)
        page.get_by_text("Auto-Annotation").first.click()
        page.locator(".lsf-tool_smart").first.click()  # the smart tools' group
        page.locator(f'.lsf-tool_smart[aria-label="{tool}"]').click()
        picture = page.locator(".lsf-image img").bounding_box()
        session["to_screen"] = lambda col, row: (picture["x"] + (col + 0.5) / w * picture["width"],
                                                 picture["y"] + (row + 0.5) / h * picture["height"])
        session["log"] = log
        yield page, session


def test_smart_keypoint_clicks_in_the_editor(label_studio, backend_url, docroot, synth_samples, local_model,
                                             tmp_path):
    from refseg_model.predictor import AnswerMemory

    ls = label_studio
    sample = max(synth_samples[-12:-4], key=lambda s: int(s["mask"].sum()))  # an object a click can hit
    h, w = sample["mask"].shape
    # the object's median pixel, not test_clicks_e2e._pixel's middle one in raster order: that can sit on the
    # image's rim (a road across the scene), which the editor's stage clips, so the click would miss the picture
    rows, cols = np.nonzero(sample["mask"])
    inside = (int(np.median(cols)), int(np.median(rows)))
    if not sample["mask"][inside[1], inside[0]]:
        inside = (int(cols[len(cols) // 2]), int(rows[len(rows) // 2]))
    clicks = [(inside, True), (_farthest_background_pixel(sample["mask"]), False)]

    with smart_tool_session(ls, backend_url, docroot, sample, "refseg-e2e-browser-clicks",
                            "key-point-tool") as (page, session):
        sent, answers, task, log = session["sent"], session["answers"], session["task"], session["log"]
        for k, ((col, row), positive) in enumerate(clicks):
            page.locator(".lsf-label", has_text="object").first.click()  # KeyPointLabels' label
            x, y = session["to_screen"](col, row)
            if not positive:
                page.keyboard.down("Alt")
            page.mouse.click(x, y)
            if not positive:
                page.keyboard.up("Alt")
            _wait(page, lambda: len(answers) > k, f"the answer to click {k + 1}")
            page.get_by_text(" suggestions").first.wait_for(timeout=30_000)
        keep_screenshot(page, tmp_path, "clicks.png", "REFSEG_CLICKS_SCREENSHOT", 20_000)
        page.locator("[data-testid=bottombar-accept-suggestions-button]").click()
        page.locator("[data-testid=bottombar-submit-button]").click()
        _wait(page, lambda: ls.get(f"/api/tasks/{task}/annotations"), "the submitted annotation")

    # what the editor sent: one keypoint, then both (the alt-click negative), at the clicked pixels
    assert len(sent) == 2, sent  # one request per click, none from accepting or submitting
    first, second = sent[0]["context"]["result"], sent[1]["context"]["result"]
    assert [r["type"] for r in first] == ["keypointlabels"] and first[0]["is_positive"] is True
    assert [r["type"] for r in second] == ["keypointlabels"] * 2
    assert [r["is_positive"] for r in second] == [True, False] and second[0]["value"] == first[0]["value"]
    for r, ((col, row), _) in zip(second, clicks):
        px = (r["value"]["x"] / 100 * w, r["value"]["y"] / 100 * h)
        assert abs(px[0] - (col + 0.5)) <= 1 and abs(px[1] - (row + 0.5)) <= 1, (px, col, row)
    # each answer is the in-process one for those clicks, the previous answer fed back
    memory = AnswerMemory()
    masks = []
    for req, ans in zip(sent[:2], answers[:2]):
        points, box = _prompts(req["context"]["result"])
        exp = local_model.predict_sequence(sample["image"], sample["expression"], points, box, memory=memory)
        [region] = ans["data"]["result"]
        assert region["type"] == "brushlabels" and region["from_name"] == "mask"
        masks.append(decode(region))
        np.testing.assert_array_equal(masks[-1], exp.mask)
    # the accepted suggestion is what was stored
    [annotation] = ls.get(f"/api/tasks/{task}/annotations")
    brush = [r for r in annotation["result"] if r["type"] == "brushlabels"]
    assert len(brush) == 1
    np.testing.assert_array_equal(decode(brush[0]), masks[-1])
    print(f"\n[e2e] editor clicks: {[(len(s['context']['result'])) for s in sent]} regions sent, masks "
          f"{[int(m.sum()) for m in masks]} px, outside requests blocked: {len(log.outside)}")


def test_smart_rectangle_in_the_editor(label_studio, backend_url, docroot, synth_samples, local_model):
    """A box dragged with the smart rectangle tool around the object: the editor sends one rectangle (its
    corners within 1 px of the drag's), and the answer is the in-process mask for that box and the expression."""
    from refseg_model.predictor import AnswerMemory
    from refseg_model.zoom_in import bounding_box

    ls = label_studio

    def inner_box(s):  # the object's box, 2 px wider each side, if that stays 4 px inside the image
        x0, y0, x1, y1 = bounding_box(s["mask"])
        h, w = s["mask"].shape
        return (x0 - 2, y0 - 2, x1 + 3, y1 + 3) if min(x0, y0) >= 6 and x1 + 7 <= w and y1 + 7 <= h else None

    sample = next(s for s in reversed(synth_samples[:-12]) if s["mask"].sum() >= 100 and inner_box(s))
    x0, y0, x1, y1 = inner_box(sample)  # pixel edges: the box covers columns x0..x1-1, rows y0..y1-1
    h, w = sample["mask"].shape
    with smart_tool_session(ls, backend_url, docroot, sample, "refseg-e2e-browser-box",
                            "rectangle-tool") as (page, session):
        page.locator(".lsf-label", has_text="object").nth(1).click()  # RectangleLabels' label
        page.mouse.move(*session["to_screen"](x0 - 0.5, y0 - 0.5))
        page.mouse.down()
        page.mouse.move(*session["to_screen"](x1 - 0.5, y1 - 0.5), steps=8)
        page.mouse.up()
        _wait(page, lambda: session["answers"], "the answer to the box")
        page.get_by_text(" suggestions").first.wait_for(timeout=30_000)
    [req], [ans] = session["sent"], session["answers"]
    [region] = req["context"]["result"]
    assert region["type"] == "rectanglelabels" and region["value"]["rectanglelabels"] == ["object"]
    points, box = _prompts([region])
    assert points == [] and np.allclose(box, (x0, y0, x1, y1), atol=1), (box, (x0, y0, x1, y1))
    exp = local_model.predict_sequence(sample["image"], sample["expression"], points, box, memory=AnswerMemory())
    [brush] = ans["data"]["result"]
    np.testing.assert_array_equal(decode(brush), exp.mask)
    print(f"\n[e2e] editor box {tuple(round(v, 1) for v in box)}: mask {int(exp.mask.sum())} px")
