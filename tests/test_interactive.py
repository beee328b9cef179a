"""Clicks and boxes with (or without) the expression: model (SAM 1 and SAM 2.1 segmenters) and predictor.

On the `tiny` / `tiny-sam2.1` presets (random weights): these tests check shapes, equivalence with SAM's own
prompt encoder, the text/no-text grouping and the predictor's caches, not segmentation quality.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from refseg_model.checkpoint import load_model
from refseg_model.modeling.refseg import geometry_tensors
from refseg_model.predictor import RefSegPredictor

torch.set_num_threads(1)
SPECS = ["tiny", "tiny-sam2.1"]


@pytest.fixture(scope="module", params=SPECS)
def model(request):
    torch.manual_seed(0)
    m, _ = load_model(request.param)
    return m.eval()


def _image(h=50, w=80, seed=1):
    return np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)


def _embedding(model, b=2):
    torch.manual_seed(1)
    s = model.image_size
    with torch.no_grad():
        return model.encode_image(torch.rand(b, 3, s, s))


def test_geometry_tensors_layout():
    coords, labels = geometry_tensors([(1, 2, True), (3, 4, False)], (9, 8, 5, 6), num_points=3)
    assert coords.shape == (1, 5, 2) and labels.tolist() == [[1, 0, -1, 2, 3]]
    assert coords[0, 3].tolist() == [5, 6] and coords[0, 4].tolist() == [9, 8]  # corners ordered
    coords, labels = geometry_tensors([(1, 2, True)], None)
    assert labels.tolist() == [[1, -1, -1]]
    coords, labels = geometry_tensors([], None)
    assert coords.shape == (1, 0, 2) and labels.shape == (1, 0)
    with pytest.raises(ValueError):
        geometry_tensors([(1, 2, True)] * 3, None, num_points=2)


def test_geometry_embedding_is_sams(model):
    """Points + box through embed_geometry == SAM's own PromptEncoder (points, boxes) sparse embedding."""
    pe = model.sam.prompt_encoder
    pts = torch.tensor([[[10.0, 20.0], [30.0, 5.0]]])
    lab = torch.tensor([[1, 0]])
    box = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    with torch.no_grad():
        ref, _ = pe(points=(pts, lab), boxes=box, masks=None)
        coords, labels = geometry_tensors([(10, 20, True), (30, 5, False)], (4, 6, 40, 50))
        ours = model.embed_geometry(coords, labels)
    assert torch.allclose(ours, ref, atol=1e-5)
    with torch.no_grad():  # no box: SAM pads one not-a-point; our layout has two padding slots
        ref, dense = pe(points=(pts, lab), boxes=None, masks=None)
        ours = model.embed_geometry(*geometry_tensors([(10, 20, True), (30, 5, False)], None))
    assert torch.allclose(ours[:, :3], ref, atol=1e-5) and torch.allclose(ours[:, 3], ref[:, 2], atol=1e-6)


def test_clicks_only_is_sam(model):
    """No text, no previous mask: the decoder sees the geometry tokens and SAM's no-mask dense embedding."""
    emb = _embedding(model, 1)
    coords, labels = geometry_tensors([(12, 30, True)], (2, 3, 40, 44))
    with torch.no_grad():
        masks, iou = model.decode_interactive(emb, coords, labels)
        sparse, dense = model.sam.prompt_encoder(points=(coords[:, :1], labels[:, :1]),
                                                 boxes=torch.tensor([[2.0, 3.0, 40.0, 44.0]]), masks=None)
        ref, ref_iou = model.sam.decode(emb.sam, sparse, dense, emb.sam_high_res)
    m = model.sam.mask_input_size
    assert masks.shape == (1, 1, m, m) and iou.shape == (1, 1)
    assert torch.allclose(masks, ref, atol=1e-4) and torch.allclose(iou, ref_iou, atol=1e-5)


def test_text_only_equals_decode(model):
    emb = _embedding(model, 2)
    tok = model.encoder.tokenize(["the red box", "a car"])
    with torch.no_grad():
        out = model.decode(emb, tok["input_ids"], tok["attention_mask"])
        text, _ = model.encode_text_prompts(emb, tok["input_ids"], tok["attention_mask"])
        coords, labels = torch.zeros(2, 0, 2), torch.zeros(2, 0, dtype=torch.long)
        masks, iou = model.decode_interactive(emb, coords, labels, text)
    assert torch.allclose(masks, out.mask_logits, atol=1e-5)


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_mixed_batch_rows_match_single_rows(model, mode):
    """A batch mixing rows with/without text and with/without a previous mask gives each row what it gives
    alone (training decodes such batches)."""
    model.cfg.interactive_dense = mode
    emb = _embedding(model, 3)
    tok = model.encoder.tokenize(["the red box", "a car", "the plane"])
    m = model.sam.mask_input_size
    rows = [geometry_tensors(p, b, num_points=2) for p, b in
            [([(5, 6, True)], None), ([(20, 21, False), (1, 2, True)], None), ([], (3, 3, 30, 30))]]
    coords = torch.cat([c for c, _ in rows])
    labels = torch.cat([lab for _, lab in rows])
    prev = torch.randn(3, 1, m, m) * 5
    text_valid = torch.tensor([True, False, True])
    mask_valid = torch.tensor([True, True, False])
    with torch.no_grad():
        text, _ = model.encode_text_prompts(emb, tok["input_ids"], tok["attention_mask"])
        masks, iou = model.decode_interactive(emb, coords, labels, text, text_valid, prev, mask_valid)
        for i in range(3):
            one = torch.tensor([i])
            t = text.index(one) if text_valid[i] else None
            mi = prev[i : i + 1] if mask_valid[i] else None
            mk, io = model.decode_interactive(emb.index(one), coords[i : i + 1], labels[i : i + 1], t, mask_input=mi)
            assert torch.allclose(mk, masks[i : i + 1], atol=1e-4), (mode, i)
    model.cfg.interactive_dense = "add"


def test_dense_modes_differ_only_with_text_and_mask(model):
    emb = _embedding(model, 1)
    tok = model.encoder.tokenize(["the red box"])
    m = model.sam.mask_input_size
    prev = torch.randn(1, 1, m, m) * 5
    coords, labels = geometry_tensors([(5, 6, True)], None)
    outs = {}
    with torch.no_grad():
        text, _ = model.encode_text_prompts(emb, tok["input_ids"], tok["attention_mask"])
        for mode in ("add", "replace"):
            model.cfg.interactive_dense = mode
            outs[mode] = (model.decode_interactive(emb, coords, labels, text, mask_input=prev)[0],
                          model.decode_interactive(emb, coords, labels, None, mask_input=prev)[0])
    model.cfg.interactive_dense = "add"
    assert not torch.allclose(outs["add"][0], outs["replace"][0])
    assert torch.allclose(outs["add"][1], outs["replace"][1])


def test_a_row_without_text_needs_geometry(model):
    emb = _embedding(model, 1)
    with pytest.raises(ValueError, match="at least one point"):
        model.decode_interactive(emb, torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.long))


# ------------------------------------------------------------------------------------------------- predictor
class Calls:
    def __init__(self, model):
        self.n = {"sam": 0, "clip": 0, "text": 0, "prompter": 0, "decoder": 0}
        enc = model.encoder.model
        self.handles = [
            model.sam.image_encoder.register_forward_hook(lambda *a: self._inc("sam")),
            enc.vision_model.register_forward_hook(lambda *a: self._inc("clip")),
            enc.text_model.register_forward_hook(lambda *a: self._inc("text")),
            model.prompter.register_forward_hook(lambda *a: self._inc("prompter")),
            model.sam.mask_decoder.transformer.register_forward_hook(lambda *a: self._inc("decoder")),
        ]

    def _inc(self, k):
        self.n[k] += 1

    def close(self):
        for h in self.handles:
            h.remove()


def test_clicks_reuse_image_and_text(model):
    pred = RefSegPredictor(model, cache_size=4)
    img = _image()
    calls = Calls(model)
    try:
        [p0] = pred.predict(img, "the red box", points=[(10, 10, True)])
        assert (calls.n["sam"], calls.n["clip"], calls.n["text"], calls.n["prompter"]) == (1, 1, 1, 1)
        [p1] = pred.predict(img, "the red box", points=[(10, 10, True), (60, 40, False)], mask_input=p0.low_res)
        [p2] = pred.predict(img, "the red box", box=(5, 5, 70, 45), mask_input=p1.low_res)
        # second and third click: no image, text or prompter pass, only the decoder
        assert (calls.n["sam"], calls.n["clip"], calls.n["text"], calls.n["prompter"]) == (1, 1, 1, 1)
        assert (pred.prompt_hits, pred.prompt_misses) == (2, 1)
        # clicks without an expression: no text side at all
        [p3] = pred.predict(img, None, points=[(10, 10, True)])
        assert (calls.n["text"], calls.n["prompter"]) == (1, 1)
        # another expression on the same image: text + prompter once more, image still cached
        pred.predict(img, "a car", points=[(10, 10, True)])
        assert (calls.n["sam"], calls.n["text"], calls.n["prompter"]) == (1, 2, 2)
        assert calls.n["decoder"] >= 5
    finally:
        calls.close()
    m = model.sam.mask_input_size
    for p in (p0, p1, p2, p3):
        assert p.mask.shape == (50, 80) and p.mask.dtype == bool
        assert p.low_res.shape == (1, 1, m, m)
        assert 0.0 <= p.score <= 1.0


def test_points_are_in_original_pixels(model):
    """A click at (x, y) of the original image lands on the same place of the frame: same answer for the
    image and its 2x upscaled copy clicked at (2x, 2y) (both fill the frame the same way)."""
    pred = RefSegPredictor(model, cache_size=4)
    small = _image(32, 48, seed=3)
    big = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    with torch.no_grad():
        _, it_s = pred.embed(small)
        _, it_b = pred.embed(big)
    assert it_s.resized == it_b.resized
    it_b.embedding = it_s.embedding  # same frame content up to resampling: compare the prompt path alone
    [a] = pred.predict(small, None, points=[(10, 20, True), (40, 5, False)], box=(2, 2, 30, 25))
    [b] = pred.predict(big, None, points=[(20, 40, True), (80, 10, False)], box=(4, 4, 60, 50))
    assert torch.allclose(a.low_res, b.low_res, atol=1e-5)


def test_text_only_predict_is_unchanged(model):
    pred = RefSegPredictor(model, cache_size=4)
    img = _image()
    [a] = pred.predict(img, "the red box")
    assert a.low_res is None
    with pytest.raises(ValueError, match="one expression"):
        pred.predict(img, ["a", "b"], points=[(1, 1, True)])
    with pytest.raises(ValueError, match="nothing to segment"):
        pred.predict(img, None)


def test_click_sequence_passes_the_previous_answer_back(model):
    """Requests carrying all clicks so far: each finds its prefix's answer in the memory and uses it as mask
    input, exactly what an explicit mask_input gives; nothing but the decoder runs after the first request."""
    from refseg_model.predictor import AnswerMemory

    pred = RefSegPredictor(model, cache_size=4)
    memory = AnswerMemory(8)
    img = _image(seed=7)
    clicks = [(10, 12, True), (60, 30, False), (33, 20, True)]
    calls = Calls(model)
    try:
        seq = [pred.predict_sequence(img, "the red box", clicks[: k + 1], None, memory) for k in range(3)]
        assert (calls.n["sam"], calls.n["text"], calls.n["prompter"]) == (1, 1, 1)
    finally:
        calls.close()
    assert memory.hits == 2  # clicks 2 and 3 found their prefix; click 1's prefix (text alone) was computed
    text = pred.predict_prompts(img, "the red box")
    ref = pred.predict_prompts(img, "the red box", clicks[:1], None, text.low_res)
    assert torch.allclose(ref.low_res, seq[0].low_res, atol=1e-5)
    for k in (1, 2):
        ref = pred.predict_prompts(img, "the red box", clicks[: k + 1], None, ref.low_res)
        assert torch.allclose(ref.low_res, seq[k].low_res, atol=1e-5)
    # clicks only, and a box: the same memory, other keys
    a = pred.predict_sequence(img, None, clicks[:1], None, memory)
    b = pred.predict_sequence(img, None, clicks[:2], None, memory)
    assert memory.hits == 3 and a.low_res is not None and b.mask.shape == (50, 80)
    pred.predict_sequence(img, None, [], (5, 5, 40, 40), memory)
