"""Zoom-in clicks (refseg_model.zoom_in): where the crop goes, and `RefSegPredictor.predict_sequence` answering a
later click on a small object on that crop, on the shipped demo model (real weights, so that its answers to
clicks on a small synthetic object are small masks)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_support import small_zoom_case
from test_interactive import Calls

from refseg_model.checkpoint import load_model, save_checkpoint
from refseg_model.predictor import AnswerMemory, RefSegPredictor
from refseg_model.transforms import logits_to_original, resize_at
from refseg_model.zoom_in import ZoomIn, crop_square, longest_side

torch.set_num_threads(1)


def test_the_crop_holds_the_mask_and_the_positive_clicks_inside_the_image():
    mask = np.zeros((128, 128), dtype=bool)
    mask[120:126, 2:10] = True  # a small object in the bottom-left corner
    points = [(12.0, 119.0, True), (6.0, 122.0, False)]
    x0, y0, side = crop_square(mask, points, expand=1.4, min_crop=40)
    assert side == 40 and 0 <= x0 <= 2 and x0 + side >= 13 and y0 + side == 128 and y0 <= 119
    assert longest_side(mask) == 8
    zoom = ZoomIn()  # 24 / 128 and 40 / 128 of the longer side: the same crop on this 128 px image
    assert zoom.crop(mask, points) == (x0, y0, side)
    assert zoom.crop(np.zeros_like(mask), points) is None  # nothing to zoom on
    big = np.zeros_like(mask)
    big[10:50, 10:40] = True  # 40 px > 24
    assert zoom.crop(big, [(20.0, 20.0, True)]) is None
    assert zoom.crop(mask, [*points, (120.0, 5.0, False)]) is None  # a last click outside the crop: full image
    # fractions of the longer side: the same object on a 256 x 512 image zooms while up to 96 px, crops >= 160
    wide = np.zeros((256, 512), dtype=bool)
    wide[100:180, 300:390] = True
    x0, y0, side = zoom.crop(wide, [(340.0, 140.0, True)])
    assert side == 160 and x0 <= 300 and x0 + side >= 390 and 0 <= y0 and y0 + side <= 256


@pytest.fixture(scope="module")
def small_case():
    """A held-out sample whose first click (after the expression) leaves a small non-empty mask, with the two
    clicks of the simulated annotator (the second answered on a crop)."""
    case = small_zoom_case(RefSegPredictor.from_spec("demo", zoom="off"))
    if case is None:
        pytest.fail("no held-out sample with a small answer after one click")
    return case


def test_a_later_click_on_a_small_answer_is_answered_on_a_crop(small_case):
    image, expr, points, first = small_case
    predictor = RefSegPredictor.from_spec("demo", zoom="on")
    memory = AnswerMemory()
    again = predictor.predict_sequence(image, expr, points[:1], None, memory)  # the first click: full image
    assert np.array_equal(again.mask, first.mask) and not any("@" in k for k in predictor.cache.keys())
    zoomed = predictor.predict_sequence(image, expr, points, None, memory)

    # what the crop should give: its clicks and the previous logits cropped, no expression, pasted back
    x0, y0, side = ZoomIn().crop(first.mask, points)
    h, w = image.shape[:2]
    size, m = predictor.image_size, predictor.model.sam.mask_input_size
    prev = logits_to_original(first.low_res, size, (h, w), (h, w))[0]
    crop_prev = torch.nn.functional.interpolate(prev[y0:y0 + side, x0:x0 + side][None, None], size=(m, m),
                                                mode="bilinear", align_corners=False)
    inside = [(x - x0, y - y0, p) for x, y, p in points if x0 <= x < x0 + side and y0 <= y < y0 + side]
    ref = RefSegPredictor.from_spec("demo", zoom="off").predict_prompts(
        np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]), None, inside, None, crop_prev)
    outside = np.ones((h, w), dtype=bool)
    outside[y0:y0 + side, x0:x0 + side] = False
    assert np.array_equal(zoomed.mask[~outside].reshape(side, side), ref.mask)
    assert np.array_equal(zoomed.mask[outside], first.mask[outside])  # the rest is the previous answer
    assert zoomed.low_res.shape == (1, 1, m, m)
    # without zoom the same request is answered on the full image: another answer
    plain = RefSegPredictor.from_spec("demo", zoom="off").predict_sequence(image, expr, points, None, AnswerMemory())
    assert not np.array_equal(plain.mask, zoomed.mask)

    # the crop's embedding is cached: the same click again runs the decoder only
    assert sum("@" in k for k in predictor.cache.keys()) == 1
    calls = Calls(predictor.model)
    try:
        repeat = predictor.predict_sequence(image, expr, points, None, memory)
    finally:
        calls.close()
    assert calls.n["sam"] == 0 and calls.n["clip"] == 0 and calls.n["decoder"] == 1
    assert np.array_equal(repeat.mask, zoomed.mask)


def test_resize_at_is_the_bilinear_resize_at_those_pixels():
    """transforms.resize_at: F.interpolate's bilinear resize (align_corners=False) at chosen pixels only; up,
    down, non-square, and the edges (where the source coordinate is clamped)."""
    rng = np.random.default_rng(0)
    for h, w, H, W in ((96, 128, 300, 400), (128, 77, 1000, 613), (128, 128, 50, 50), (100, 128, 73, 95),
                       (64, 64, 64, 64), (128, 90, 5000, 3516)):
        frame = torch.randn(h, w, generator=torch.Generator().manual_seed(h * w)) * 5
        full = torch.nn.functional.interpolate(frame[None, None], size=(H, W), mode="bilinear",
                                               align_corners=False)[0, 0]
        ys, xs = rng.integers(0, H, 2000), rng.integers(0, W, 2000)
        ys[:4], xs[:4] = [0, 0, H - 1, H - 1], [0, W - 1, 0, W - 1]
        assert torch.allclose(resize_at(frame, (H, W), ys, xs), full[ys, xs].double(), atol=1e-3, rtol=0)


def test_large_answers_skip_the_image_size_logits_and_every_answer_stays_the_same(monkeypatch):
    """Deciding whether to zoom needs the previous answer at the image's size (H x W logits per click) only
    when it may be small: `_surely_large` rules large ones out from the frame-size logits and four exact pixels.
    On upscaled non-square scenes (640 x 500), every click's answer is the one of the full computation, the
    shortcut is taken for large answers (each then really too large to zoom into) and zoom-in still happens."""
    from refseg_model.data.sources import synth_val_samples
    from refseg_model.evaluate import simulate_clicks
    from refseg_model.predictor import Answer

    fast = RefSegPredictor.from_spec("demo", zoom="on")
    full = RefSegPredictor.from_spec("demo", zoom="on")
    monkeypatch.setattr(full, "_surely_large", lambda item, low_res: False)  # always the H x W logits
    decided = []
    surely_large = fast._surely_large

    def spy(item, low_res):
        decided.append((item, low_res, surely_large(item, low_res)))
        return decided[-1][2]

    monkeypatch.setattr(fast, "_surely_large", spy)
    for image, gt, expr in synth_val_samples("default", fast.image_size, 16, seed=20_261_202):
        image = np.kron(image[:, :100], np.ones((5, 5, 1), dtype=np.uint8))  # 640 x 500, nearest
        gt = np.kron(gt[:, :100], np.ones((5, 5), dtype=bool))
        if not gt.any():
            continue
        curves = [simulate_clicks(p, image, gt, expr, max_clicks=4) for p in (fast, full)]
        assert curves[0] == curves[1]
    skipped = [(item, low_res) for item, low_res, large in decided if large]
    assert skipped and len(skipped) < len(decided)
    for item, low_res in skipped:
        mask = (fast._answer_logits(item, Answer(low_res)) > fast.threshold).numpy()
        assert fast.zoom.too_large(longest_side(mask), mask.shape)
    assert any("@" in k for k in fast.cache.keys())  # small answers were still zoomed into


def test_zoom_auto_follows_the_checkpoint_and_training_records_it(tmp_path):
    model, meta = load_model("tiny")
    save_checkpoint(model, tmp_path / "plain", "p", metadata={})
    save_checkpoint(model, tmp_path / "zoomed", "z", metadata={"zoom_in": True})
    assert RefSegPredictor.from_spec(str(tmp_path / "plain")).zoom is None
    assert RefSegPredictor.from_spec(str(tmp_path / "zoomed")).zoom == ZoomIn()
    assert RefSegPredictor.from_spec(str(tmp_path / "zoomed"), zoom="off").zoom is None
    assert RefSegPredictor.from_spec(str(tmp_path / "plain"), zoom="on").zoom == ZoomIn()
    with pytest.raises(ValueError, match="zoom must be auto, on or off"):
        RefSegPredictor.from_spec(str(tmp_path / "plain"), zoom="yes")
    assert json.loads((tmp_path / "zoomed" / "config.json").read_text())["metadata"]["zoom_in"] is True


def test_the_workers_model_cache_passes_click_zoom_to_the_predictor(tmp_path):
    """CLICK_ZOOM reaches the workers' predictors (workers.model_cache.ModelCache <- Settings.click_zoom)."""
    from jobs.settings import Settings
    from workers.model_cache import ModelCache

    model, _ = load_model("tiny")
    save_checkpoint(model, tmp_path / "zoomed", "z", metadata={"zoom_in": True})
    spec = str(tmp_path / "zoomed")
    for env, expected in (({}, ZoomIn()), ({"CLICK_ZOOM": "off"}, None)):
        cache = ModelCache("cpu", 1, click_zoom=Settings.from_env(env).click_zoom)
        assert cache.get(spec).zoom == expected
    assert ModelCache("cpu", 1).get("demo").zoom == ZoomIn()  # the shipped demo-v3 is zoom-trained: auto = on
    assert ModelCache("cpu", 1, click_zoom="off").get("demo").zoom is None


def test_zoomed_crops_are_not_trained_on_their_first_prompt_alone():
    """interactive_pass_loss leaves zoomed rows out of the first pass (their answer without a previous mask,
    which zoom-in never asks for) and keeps them in the later passes."""
    from refseg_model.config import LossConfig
    from refseg_model.modeling.loss import dice_loss, interactive_pass_loss, masked_bce

    g = torch.Generator().manual_seed(0)
    target = (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()
    valid = torch.ones(4, 1, 16, 16)
    passes = [torch.randn(3, 1, 16, 16, generator=g) for _ in range(2)]  # the last 3 rows are interactive
    w = LossConfig()

    def one(logits, t, v):
        return w.bce * masked_bce(logits, t, v) + w.dice * dice_loss(logits, t, v)

    zoomed = torch.tensor([False, False, True, False])  # row 2: the second interactive row
    keep = torch.tensor([True, False, True])
    expected = (one(passes[0][keep], target[1:][keep], valid[1:][keep]) + one(passes[1], target[1:], valid[1:])) / 2
    assert torch.allclose(interactive_pass_loss(passes, target, valid, w, zoomed), expected)
    everything = (one(passes[0], target[1:], valid[1:]) + one(passes[1], target[1:], valid[1:])) / 2
    assert torch.allclose(interactive_pass_loss(passes, target, valid, w), everything)
    assert not torch.allclose(expected, everything)
    # a single pass of zoomed rows only: nothing to learn from it, a zero that keeps the graph
    first = passes[0].clone().requires_grad_()
    only = interactive_pass_loss([first], target, valid, w, torch.tensor([False, True, True, True]))
    assert float(only.detach()) == 0.0
    only.backward()
    assert torch.equal(first.grad, torch.zeros_like(first))
