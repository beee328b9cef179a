"""Simulated clicks (refseg_model/interactive.py) and interactive training steps (interactive_training.interactive_plan)."""
from __future__ import annotations

import pytest
import torch

from refseg_model.checkpoint import load_model
from refseg_model.interactive import boxes_of, depth, iou, next_clicks, random_points_in
from refseg_model.interactive_training import (
    GEOMETRY_KINDS,
    interactive_forward,
    interactive_plan,
    rows_without_text_last,
)

torch.set_num_threads(1)


def _rect(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, h, w, dtype=torch.bool)
    m[0, y0:y1, x0:x1] = True
    return m


def test_first_click_is_the_deepest_target_point():
    target = _rect(40, 60, 10, 31, 5, 26)  # 21 x 21 square centred at (15, 20)
    xy, positive, has_error = next_clicks(torch.zeros_like(target), target)
    assert positive.item() and has_error.item()
    assert xy[0].tolist() == [15.0, 20.0]


def test_false_area_gets_a_negative_click_missed_target_a_positive_one():
    target = _rect(40, 60, 5, 15, 5, 15)
    spill = target | _rect(40, 60, 20, 38, 30, 58)  # a big false area
    xy, positive, _ = next_clicks(spill, target)
    assert not positive.item()
    x, y = xy[0].tolist()
    assert 30 <= x < 58 and 20 <= y < 38
    miss = _rect(40, 60, 5, 8, 5, 8)  # most of the target missed
    xy, positive, _ = next_clicks(miss, target)
    assert positive.item() and target[0, int(xy[0, 1]), int(xy[0, 0])]
    xy, positive, has_error = next_clicks(target, target)  # nothing to correct
    assert not has_error.item()


def test_clicks_stay_inside_valid_pixels():
    target = _rect(32, 32, 0, 32, 0, 32)
    valid = _rect(32, 32, 0, 20, 0, 32)
    xy, _, _ = next_clicks(torch.zeros_like(target), target, valid)
    assert xy[0, 1] < 20


def test_depth_and_boxes():
    r = _rect(20, 20, 2, 9, 3, 12)
    d = depth(r)
    assert d[~r].eq(0).all() and d.max() >= 4
    assert boxes_of(r)[0].tolist() == [3.0, 2.0, 12.0, 9.0]
    g = torch.Generator().manual_seed(0)
    jittered = boxes_of(r, g)[0]
    assert (jittered - torch.tensor([3.0, 2.0, 12.0, 9.0])).abs().max() <= 1.0  # 10 % of a 9 px side
    xy, ok = random_points_in(r, torch.Generator().manual_seed(1))
    assert ok.item() and r[0, int(xy[0, 1]), int(xy[0, 0])]
    assert iou(r, r).item() == 1.0


def test_plan_is_a_function_of_seed_rank_step():
    a = interactive_plan(8, 0.5, seed=0, rank=0, step=3)
    assert a == interactive_plan(8, 0.5, seed=0, rank=0, step=3)
    assert a["rows"] == 4 and len(a["kinds"]) == 4 and 1 <= a["corrections"] <= 3
    assert interactive_plan(8, 0.0, 0, 0, 3) is None
    plans = [interactive_plan(8, 1.0, 0, 0, s) for s in range(20)]
    assert {k for p in plans for k in p["kinds"]} == {"text", "click", "box", "text+click", "wrong-text+click"}
    assert {p["corrections"] for p in plans} == {1, 2, 3}


def test_plan_draws_up_to_max_corrections():
    """`--max-corrections N`: 1..N corrective clicks per step; the default (3) draws what the plan always did."""
    assert interactive_plan(8, 0.5, 0, 0, 3, max_corrections=3) == interactive_plan(8, 0.5, 0, 0, 3)
    long = {interactive_plan(8, 1.0, 0, 0, s, max_corrections=8)["corrections"] for s in range(60)}
    assert long <= set(range(1, 9)) and max(long) > 3 and min(long) == 1
    assert {interactive_plan(8, 1.0, 0, 0, s, max_corrections=1)["corrections"] for s in range(10)} == {1}


def test_rows_without_an_expression_always_train_from_a_click_or_a_box():
    """Clicks-only annotations (expression "") go last in the batch and are always interactive, from a click or
    a box; a batch with expressions only draws exactly the plan it always did."""
    base = interactive_plan(8, 0.5, seed=0, rank=0, step=3)
    assert interactive_plan(8, 0.5, 0, 0, 3, no_text=0) == base
    one = interactive_plan(8, 0.5, 0, 0, 3, no_text=1)
    assert one["rows"] == 4 and one["kinds"][:3] == base["kinds"][:3] and one["kinds"][3] in GEOMETRY_KINDS
    assert (one["corrections"], one["seed"]) == (base["corrections"], base["seed"])
    many = [interactive_plan(8, 0.25, 0, 0, s, no_text=5) for s in range(20)]
    assert {p["rows"] for p in many} == {5}  # more than round(0.25 * 8): every row without text
    assert {k for p in many for k in p["kinds"]} == set(GEOMETRY_KINDS)
    assert interactive_plan(4, 0.0, 0, 0, 1, no_text=2)["rows"] == 2  # even with --interactive-frac 0

    rows = torch.arange(4.0).reshape(4, 1)
    (moved,), exprs, text_rows = rows_without_text_last((rows,), ["a", "", "c", ""])
    assert moved.flatten().tolist() == [0.0, 2.0, 1.0, 3.0] and exprs == ["a", "c", "", ""]
    assert text_rows.tolist() == [True, True, False, False]
    assert rows_without_text_last((rows,), ["a", "b", "c", "d"])[2] is None
    with pytest.raises(ValueError, match="single process"):
        rows_without_text_last((rows,), ["a", ""], world=2)


def test_the_text_paths_losses_skip_rows_without_an_expression():
    """orthogonality, region-text contrastive and dense-prompt losses see only the rows with an expression."""
    from dataclasses import replace

    from refseg_model.modeling.loss import refseg_loss

    model, images, target, valid, tok = _training_batch("tiny")
    out = model(images, tok["input_ids"], tok["attention_mask"])
    weights = replace(model.cfg.loss, orthogonality=1.0, contrastive=1.0, dense=1.0)
    keep = torch.tensor([True, False, True, True])
    part = refseg_loss(model, out, target, valid, weights, keep)
    rows = keep.nonzero().squeeze(1)
    sub = replace(out, mask_logits=out.mask_logits[rows], dense_logits=out.dense_logits[rows], q1=out.q1[rows],
                  q2=out.q2[rows], clip_tokens=out.clip_tokens[rows])
    only = refseg_loss(model, sub, target[rows], valid[rows], weights)
    full = refseg_loss(model, out, target, valid, weights)
    for k in ("orth", "contrast", "dense"):
        assert torch.allclose(part[k], only[k]), k
        assert not torch.allclose(part[k], full[k]), k  # the row without text would have counted
    assert torch.allclose(part["bce"], full["bce"])  # the mask itself is supervised on every row
    none = refseg_loss(model, out, target, valid, weights, torch.zeros(4, dtype=torch.bool))
    assert [float(none[k].detach()) for k in ("orth", "contrast", "dense")] == [0.0, 0.0, 0.0]


def _training_batch(spec):
    """A model of preset `spec` in train mode and a 4-row batch: random images, one box-shaped target each."""
    torch.manual_seed(0)
    model, _ = load_model(spec)
    model.train()
    s = model.image_size
    images = torch.rand(4, 3, s, s)
    target = torch.zeros(4, 1, s, s)
    target[:, :, 10:40, 12:30] = 1
    valid = torch.ones_like(target)
    return model, images, target, valid, model.encoder.tokenize(["a", "b", "c", "d"])


@pytest.mark.parametrize("spec", ["tiny", "tiny-sam2.1"])
def test_interactive_forward_trains_the_decoder_on_the_last_pass(spec):
    model, images, target, valid, tok = _training_batch(spec)
    plan = {"rows": 3, "kinds": ["click", "box", "text+click"], "corrections": 2, "seed": 5}
    out = interactive_forward(model, images, tok["input_ids"], tok["attention_mask"], target, valid, **plan)
    m = model.sam.mask_input_size
    assert out.mask_logits.shape == (4, 1, m, m)
    out.mask_logits.sum().backward()
    assert model.sam.prompt_encoder.point_embeddings[1].weight.grad is not None  # positive clicks were used
    assert model.sam.mask_decoder.iou_token.weight.grad is not None


@pytest.mark.parametrize("spec", ["tiny", "tiny-sam2.1"])
def test_interactive_step_supervises_every_pass_including_the_first_click(spec):
    """The initial prompt's answer (a click or a box with no previous mask: SAM's no-mask embedding, what the
    click tool answers a first click with) is in the loss, not only the last pass: with the last pass alone
    (which always has a previous mask) the no-mask embedding got no gradient and a first click never learned."""
    from refseg_model.train import _TrainStep

    model, images, target, valid, tok = _training_batch(spec)
    plan = {"rows": 2, "kinds": ["click", "box"], "corrections": 2, "seed": 5}
    parts = _TrainStep(model)(images, tok["input_ids"], tok["attention_mask"], target, valid, plan)
    assert "passes" in parts and float(parts["passes"].detach()) > 0
    parts["loss"].backward()
    grad = model.sam.prompt_encoder.no_mask_embed.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_wrong_text_rows_decode_another_expression_with_the_click():
    """A "wrong-text+click" row is decoded from the next row's expression on its own image (plus its click on
    the true target): its first pass equals a "text+click" pass whose text is that other expression, and differs
    from the one with its own expression. The other rows are untouched."""
    model, images, target, valid, tok = _training_batch("tiny")
    model.eval()  # no dropout: passes are compared exactly
    ids, att = tok["input_ids"], tok["attention_mask"]
    plan = {"rows": 2, "kinds": ["text+click", "wrong-text+click"], "corrections": 1, "seed": 5}
    with torch.no_grad():
        wrong = interactive_forward(model, images, ids, att, target, valid, **plan)
        right = interactive_forward(model, images, ids, att, target, valid,
                                    **{**plan, "kinds": ["text+click", "text+click"]})
        # row 3 with row 2's expression: exactly what "wrong" decodes
        ids_b, att_b = ids.clone(), att.clone()
        ids_b[3], att_b[3] = ids[2], att[2]
        swapped = interactive_forward(model, images, ids_b, att_b, target, valid,
                                      **{**plan, "kinds": ["text+click", "text+click"]})
    first_w, first_r, first_s = (o.interactive_passes[0] for o in (wrong, right, swapped))
    assert torch.allclose(first_w[0], first_r[0]) and torch.allclose(wrong.mask_logits[:2], right.mask_logits[:2])
    assert torch.allclose(first_w[1], first_s[1], atol=1e-5)
    assert not torch.allclose(first_w[1], first_r[1], atol=1e-3)


def test_annotator_effort_counts_clicks_and_failures():
    """benchmarks/annotator_effort.py's figures: NoC is the first click count at the threshold (max clicks when
    never), NoF the samples that never get there."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "annotator_effort.py"
    spec = importlib.util.spec_from_file_location("annotator_effort", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    curves = [[0.9, 0.9, 0.9, 0.9],   # the expression alone is enough: 0 clicks
              [0.2, 0.5, 0.86, 0.95],  # 0.85 at 2 clicks, 0.90 at 3
              [0.0, 0.3, 0.6, 0.7]]    # never: counts max_clicks (3), and is a failure at both thresholds
    r = bench.summarise(curves, [0.01, 0.03], max_clicks=3)
    assert r["NoC@85"] == (0 + 2 + 3) / 3 and r["NoC@90"] == (0 + 3 + 3) / 3
    assert r["NoF@85"] == 1 and r["NoF@90"] == 1
    assert abs(r["IoU@1"] - (0.9 + 0.5 + 0.3) / 3) < 1e-9 and abs(r["click_ms_p50"] - 20.0) < 1e-9
    by_area = bench.failures_by_area(curves, [100, 120, 2000])
    assert by_area["[0, 150)"] == [0, 2] and by_area["[1500, inf)"] == [1, 1] and by_area["[150, 400)"] == [0, 0]
