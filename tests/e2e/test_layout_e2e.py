"""The README's click config in Label Studio's labeling editor, in headless Chromium at 1600 x 1000.

With the prompt TextArea after the Image (the earlier README config), the TextArea sat below the editor's bottom
bar and the click labels further down: the annotator had to scroll to type the expression. The README's config
now puts the image beside a side column with the expression, the prompt and the click / box / mask labels. This
test logs into the session's real Label Studio (every request not to 127.0.0.1 / localhost is blocked), opens a
task of a project with that config (our backend connected, interactive) and checks that the prompt input, the
keypoint label and the image lie fully inside the window and above the bottom bar, and are the topmost element
at their centre (not covered). Screenshot: $REFSEG_LAYOUT_SCREENSHOT (docs/labeling_layout.png in the repo).
"""
from __future__ import annotations

import os

import pytest
from browser_support import keep_screenshot, localhost_page
from click_configs import readme_config
from e2e_flow import connect, create_project, predictions
from ls_editor import open_task

pytestmark = pytest.mark.e2e
VIEWPORT = {"width": 1600, "height": 1000}
# Label Studio's own noise in a browser cut off from the internet (shared/docs/labelstudio-e2e.md §9): requests
# to outside hosts that the test aborts, its CSP report about framing labelstud.io, its /heidi-tips 404
LS_NOISE = ("net::ERR_FAILED", "labelstud.io", "heidi-tips")


def _box(locator) -> dict:
    box = locator.bounding_box()
    assert box is not None, f"{locator} is not rendered"
    return {k: round(v, 1) for k, v in box.items()}


def test_readme_click_config_keeps_prompt_labels_and_image_in_view(label_studio, backend_url, docroot,
                                                                     synth_samples, tmp_path):
    ls = label_studio
    project = create_project(ls, "refseg-e2e-layout", [synth_samples[-3]], docroot / "ds", config=readme_config())
    connect(ls, project["id"], backend_url)
    [task] = project["tasks"]
    with localhost_page(VIEWPORT, fail_instead=os.environ.get("REFSEG_E2E_REQUIRE") == "1") as (page, log):
        open_task(page, ls, project["id"], task)
        prompt = page.get_by_placeholder("referring expression")
        labels = page.locator(".lsf-label", has_text="object")
        image = page.locator(".lsf-image")  # the Image tag: the picture
        stage = page.locator(".konvajs-content")  # the canvas over it, where clicks and boxes are drawn
        prompt.wait_for(state="visible", timeout=60_000)
        assert labels.count() == 2  # KeyPointLabels' and RectangleLabels' "object", in config order
        keypoint = labels.first
        bottom_bar = _box(page.locator(".lsf-bottombar"))
        boxes = {"prompt": _box(prompt), "keypoint label": _box(keypoint), "image": _box(image),
                 "stage": _box(stage), "bottom bar": bottom_bar}
        print(f"\n[e2e] layout at {VIEWPORT['width']}x{VIEWPORT['height']}: {boxes}")
        for name, el in (("prompt", prompt), ("keypoint label", keypoint), ("image", image), ("stage", stage)):
            b = boxes[name]
            assert b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["width"] <= VIEWPORT["width"] \
                and b["y"] + b["height"] <= VIEWPORT["height"], f"{name} {b} is not inside the window"
            assert b["y"] + b["height"] <= bottom_bar["y"], f"{name} {b} reaches under the bottom bar {bottom_bar}"
            if name == "image":
                continue  # the stage lies over the picture: the centre check is the stage's
            # nothing covers it: the element at its centre is it (or inside it)
            assert el.evaluate("""e => { const r = e.getBoundingClientRect();
                const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
                return e === top || e.contains(top); }"""), f"{name} is covered at its centre"
        # a live control, not a picture of one: clicking the label selects it
        keypoint.click()
        page.wait_for_function("() => document.querySelector('.lsf-label_selected') !== null", timeout=10_000)
        assert "lsf-label_selected" in (keypoint.get_attribute("class") or "")

        keep_screenshot(page, tmp_path, "labeling_layout.png", "REFSEG_LAYOUT_SCREENSHOT", 20_000)
    # opening the task made Label Studio ask for its prediction from the Data Manager list and the task view at
    # once; the second request, coming while the first one's job ran, was answered "pending": one prediction
    preds = predictions(ls, project["id"])
    print(f"[e2e] predictions of the opened task: {[(p['model_version'], p['task']) for p in preds]}")
    assert len(preds) == 1, preds
    ours = [m for m in log.console + log.page_errors if not any(n in m for n in LS_NOISE) and "404" not in m]
    assert ours == [], f"console errors: {ours}"
    assert all("heidi-tips" in s for s in log.bad_status), f"failed requests: {log.bad_status}"
