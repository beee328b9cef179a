"""Zoom-in clicks through the whole service (real Redis, an RQ worker, gunicorn) on the shipped demo model, which
is trained for them (`CLICK_ZOOM` unset = auto = on): Label Studio's click requests, each with all keypoints so
far, are answered exactly as the in-process predictor with zoom-in answers them, and the click that zooms gets
another answer than the full image would give (so a worker that did not zoom fails this test)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from backend_support import decode_brush, png
from click_configs import CLICKS
from model_support import small_zoom_case
from rel_stack import Stack

PROJECT = 93


@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory, fake_ls):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    s = Stack(tmp_path_factory.mktemp("zoom-stack"), "demo", fake_ls.url)
    try:
        yield s.start(workers=(("infer", "interactive,batch"),))
    finally:
        s.close()


def test_clicks_on_a_small_object_are_zoomed_in_the_worker_as_in_process(demo_stack, fake_ls):
    import torch

    from refseg_model.predictor import AnswerMemory, RefSegPredictor

    torch.set_num_threads(1)  # the worker runs with one thread: same arithmetic
    case = small_zoom_case(RefSegPredictor.from_spec("demo", zoom="off"))
    assert case is not None, "no held-out sample with a small answer after one click"
    image, expr, points, _ = case
    h, w = image.shape[:2]
    path = f"/data/upload/{PROJECT}/zoom.png"
    fake_ls.files[path] = png(image)
    task = {"id": 9300, "project": PROJECT, "data": {"image": path, "expression": expr}}
    clicks = [{"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": positive,
               "original_width": w, "original_height": h,
               "value": {"x": x / w * 100, "y": y / h * 100, "width": 0.8, "keypointlabels": ["object"]}}
              for x, y, positive in points]
    # what the worker sees: percent of the image back to pixels (labelstudio.prompts)
    pixels = [(c["value"]["x"] / 100 * w, c["value"]["y"] / 100 * h, c["is_positive"]) for c in clicks]
    zoomed, plain = RefSegPredictor.from_spec("demo"), RefSegPredictor.from_spec("demo", zoom="off")
    assert zoomed.zoom is not None  # the shipped demo is trained for zoom-in
    memory, plain_memory = AnswerMemory(), AnswerMemory()
    for k in (1, 2):
        body = {"tasks": [task], "project": f"{PROJECT}.1712345678", "label_config": CLICKS,
                "params": {"context": {"result": clicks[:k]}}}
        r = demo_stack.post("/predict", json=body)
        assert r.status_code == 200, r.text
        [res] = r.json()["results"]
        assert "error" not in res, res
        expected = zoomed.predict_sequence(image, expr, pixels[:k], None, memory).mask
        full = plain.predict_sequence(image, expr, pixels[:k], None, plain_memory).mask
        got = np.zeros((h, w), dtype=bool)
        for region in res["result"]:
            got |= decode_brush(region)
        np.testing.assert_array_equal(got, expected)
        if k == 1:
            assert np.array_equal(expected, full)  # the first click is answered on the full image
        else:
            assert not np.array_equal(expected, full)  # the second on a crop, which answers otherwise
