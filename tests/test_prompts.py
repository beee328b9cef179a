"""Smart click/box tools in the label config, and the interactive context -> clicks / box in image pixels."""
from __future__ import annotations

import pytest
from click_configs import CLICKS, CLICKS_ONLY, readme_config

from labelstudio.labelconfig import LabelConfigError, ProjectConfig, parse_label_config
from labelstudio.prompts import MAX_POINTS, PromptError, parse_prompts, prompts_from_json, rescale


def kp(x, y, positive=True, w=200, h=100, label="object", **extra):
    item = {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": positive,
            "original_width": w, "original_height": h,
            "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}
    item.update(extra)
    return item


def rect(x, y, bw, bh, w=200, h=100, label="object"):
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"x": x, "y": y, "width": bw, "height": bh, "rotation": 0,
                                            "rectanglelabels": [label]}}


def test_label_config_smart_tools():
    cfg = parse_label_config(CLICKS)
    assert (cfg.keypoint_name, cfg.keypoint_labels) == ("click", ("object",))
    assert (cfg.rectangle_name, cfg.rectangle_labels) == ("box", ("object",))
    assert cfg.text_key == "expression" and cfg.has_smart_tools
    assert ProjectConfig.from_dict(cfg.to_dict()) == cfg
    only = parse_label_config(CLICKS_ONLY)  # no expression at all: fine with a click tool
    assert only.keypoint_name == "click" and only.rectangle_name is None and only.text_key is None
    not_smart = CLICKS_ONLY.replace(' smart="true"', "")
    with pytest.raises(LabelConfigError, match="click tool"):
        parse_label_config(not_smart)


def test_points_and_box_in_pixels():
    cfg = parse_label_config(CLICKS)
    p = parse_prompts(cfg, {"result": [kp(10, 50), kp(50, 20, positive=False), rect(5, 10, 50, 80),
                                       {"type": "textarea", "value": {"text": ["x"]}}]})
    assert p.points == ((20.0, 50.0, True), (100.0, 20.0, False))
    assert p.box == pytest.approx((10.0, 10.0, 110.0, 90.0))
    assert p.image_size == (200, 100) and bool(p)
    back = prompts_from_json(p.to_json())
    assert (back.points, back.box, back.image_size) == (p.points, p.box, p.image_size)
    r = rescale(back, 400, 200)
    assert r.points[0] == (40.0, 100.0, True) and r.box == pytest.approx((20.0, 20.0, 220.0, 180.0))
    assert not parse_prompts(cfg, {"result": []}) and not parse_prompts(cfg, None)
    # the last rectangle is the box; a keypoint without is_positive is positive
    item = kp(0, 100)
    del item["is_positive"]
    p = parse_prompts(cfg, {"result": [rect(0, 0, 10, 10), rect(1, 1, 2, 2), item]})
    assert p.box == pytest.approx((2.0, 1.0, 6.0, 3.0)) and p.points == ((0.0, 100.0, True),)


def test_regions_of_other_controls_are_not_prompts():
    cfg = parse_label_config(CLICKS_ONLY)
    other = kp(10, 10)
    other["from_name"] = "landmarks"
    assert not parse_prompts(cfg, {"result": [other, rect(1, 1, 2, 2)]})  # no smart rectangle in this config


@pytest.mark.parametrize("items, message", [
    ([kp(150, 10)], "outside 0-100"),
    ([kp(10, -3)], "outside 0-100"),
    ([rect(60, 10, 50, 10)], "outside the image"),
    ([{**kp(10, 10), "value": None}], "without a 'value'"),
    ([{k: v for k, v in kp(10, 10).items() if k != "value"}], "without a 'value'"),
    ([kp(10, 10, label="cat")], "unknown label 'cat'"),
    ([kp("10", 10)], "must be a number"),
    ([kp(float("nan"), 10)], "must be a number"),
    ([kp(10, 10, positive="yes")], "is_positive"),
    ([kp(10, 10, w=None)], "original_width"),
    ([kp(10, 10, w=-5)], "original_width"),
    ([kp(10, 10), kp(10, 10, w=300)], "differs"),
    ([kp(1, 1)] * (MAX_POINTS + 1), "more than"),
    ([kp(1, 1)] * 1000, "more than"),
])
def test_bad_click_contexts(items, message):
    with pytest.raises(PromptError, match=message):
        parse_prompts(parse_label_config(CLICKS), {"result": items})


def test_junk_contexts_raise_prompt_errors_only():
    """Any JSON shape in a smart region is a PromptError (400) or ignored, never another exception (500)."""
    import random

    cfg = parse_label_config(CLICKS)
    junk = [None, 5, "x", [], {}, [1], {"a": 1}, float("inf"), -1, 1e308, True, "object", ["object"], [None]]
    rng = random.Random(0)

    def pick(extra=()):
        return rng.choice(junk + list(extra))

    for _ in range(3000):
        value = {k: pick([10, 50, 0]) for k in ("x", "y", "width", "height", "rotation")}
        value.update(keypointlabels=pick(), rectanglelabels=pick())
        item = {"type": pick(["keypointlabels", "rectanglelabels"]), "from_name": pick(["click", "box"]),
                "value": pick([value]), "original_width": pick([64]), "original_height": pick([48]),
                "is_positive": pick([False])}
        item = {k: v for k, v in item.items() if rng.random() < 0.85}
        try:
            parse_prompts(cfg, {"result": [item]})
        except PromptError:
            pass


def test_readme_click_config_finds_every_tool():
    """The README's config (a flex layout of nested Views) still gives the backend all its tags."""
    cfg = parse_label_config(readme_config())
    assert (cfg.image_name, cfg.image_key, cfg.output, cfg.from_name, cfg.label) == \
        ("image", "image", "brush", "mask", "target")
    assert (cfg.text_key, cfg.textarea_name) == ("expression", "prompt")
    assert (cfg.keypoint_name, cfg.keypoint_labels) == ("click", ("object",))
    assert (cfg.rectangle_name, cfg.rectangle_labels) == ("box", ("object",))
