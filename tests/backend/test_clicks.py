"""Interactive clicks and boxes through the real app, Redis and RQ workers (Label Studio's smart tools).

Each request carries all smart regions of the annotation so far, as Label Studio sends them; the worker keeps
the previous answer (mask input), the image embedding and the text's prompter output, so the expected answers
are those of a local predictor fed the same sequence (`predict_sequence` with its own memory).
"""
from __future__ import annotations

import numpy as np
import pytest
import requests
from backend_support import decode_brush, png, scene, wait_for
from click_configs import CLICKS as CONFIG_CLICKS
from click_configs import CLICKS_ONLY as CONFIG_CLICKS_ONLY
from click_configs import readme_config

from refseg_model.predictor import AnswerMemory

PROJECT = 21


def _task(fake_ls, tid: int, h: int = 48, w: int = 64, expression: str = "the bright block"):
    img, mask = scene(tid, h, w)
    path = f"/data/upload/{PROJECT}/click{tid}.png"
    fake_ls.files[path] = png(img)
    data = {"image": path}
    if expression:
        data["expression"] = expression
    return {"id": tid, "project": PROJECT, "data": data, "annotations": [], "drafts": [], "predictions": []}, img


def kp(x, y, positive=True, w=64, h=48, label="object"):
    return {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": positive,
            "original_width": w, "original_height": h, "id": f"k{x}-{y}",
            "value": {"x": x, "y": y, "width": 0.8, "keypointlabels": [label]}}


def rect(x, y, bw, bh, w=64, h=48, label="object"):
    return {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"x": x, "y": y, "width": bw, "height": bh, "rotation": 0,
                                            "rectanglelabels": [label]}}


def _post(url, task, config, result):
    body = {"tasks": [task], "project": f"{PROJECT}.1712345678", "label_config": config,
            "params": {"login": None, "password": None, "context": {"result": result}}}
    return requests.post(url + "/predict", json=body, timeout=60)


def _check(res, expected, shape):
    assert res["model_version"] == "tiny-test" and "error" not in res, res
    if not expected.mask.any():
        assert res["result"] == []
        return
    [region] = res["result"]  # one brush region for the object
    assert region["type"] == "brushlabels" and region["from_name"] == "mask"
    assert (region["original_height"], region["original_width"]) == shape
    got = decode_brush(region)
    assert np.mean(got != expected.mask) <= 0.002
    assert abs(res["score"] - expected.score) < 1e-4


def _pixels(items, w=64, h=48):
    pts = [(i["value"]["x"] / 100 * w, i["value"]["y"] / 100 * h, i["is_positive"]) for i in items]
    return pts


def test_keypoint_then_negative_keypoint_with_the_expression(gunicorn_url, fake_ls, local_predictor):
    task, img = _task(fake_ls, 2100)
    memory = AnswerMemory()
    clicks = [kp(40.0, 50.0), kp(80.0, 20.0, positive=False), kp(30.0, 40.0)]
    for k in range(1, len(clicks) + 1):
        r = _post(gunicorn_url, task, CONFIG_CLICKS, clicks[:k])
        assert r.status_code == 200, r.text
        [res] = r.json()["results"]
        exp = local_predictor.predict_sequence(img, "the bright block", _pixels(clicks[:k]), None, memory)
        _check(res, exp, img.shape[:2])


def test_rectangle(gunicorn_url, fake_ls, local_predictor):
    task, img = _task(fake_ls, 2101, 40, 90)
    box = rect(10.0, 20.0, 50.0, 60.0, w=90, h=40)
    r = _post(gunicorn_url, task, CONFIG_CLICKS, [box])
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    exp = local_predictor.predict_sequence(img, "the bright block", [], (9.0, 8.0, 54.0, 32.0), AnswerMemory())
    _check(res, exp, (40, 90))
    # a box and then a click on top of it
    click = kp(30.0, 50.0, w=90, h=40)
    r = _post(gunicorn_url, task, CONFIG_CLICKS, [box, click])
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["model_version"] == "tiny-test"


def test_clicks_without_an_expression(gunicorn_url, fake_ls, local_predictor):
    setup = requests.post(gunicorn_url + "/setup", json={"project": f"{PROJECT}.1", "schema": CONFIG_CLICKS_ONLY})
    assert setup.status_code == 200, setup.text
    task, img = _task(fake_ls, 2102, expression=None)
    memory = AnswerMemory()
    clicks = [kp(25.0, 25.0), kp(60.0, 70.0, positive=False)]
    for k in (1, 2):
        r = _post(gunicorn_url, task, CONFIG_CLICKS_ONLY, clicks[:k])
        assert r.status_code == 200, r.text
        [res] = r.json()["results"]
        exp = local_predictor.predict_sequence(img, None, _pixels(clicks[:k]), None, memory)
        _check(res, exp, img.shape[:2])


def _typed(text):
    return {"type": "textarea", "from_name": "prompt", "to_name": "image", "origin": "manual",
            "value": {"text": [text] if text else []}}


def test_a_click_after_typing_uses_the_typed_expression(gunicorn_url, fake_ls, local_predictor):
    """Label Studio's editor sends the typed TextArea text in a request of its own and a click without it: the
    click is combined with what was typed for the task, not with the task's $expression; clearing the TextArea
    goes back to the task's expression."""
    config = readme_config()  # TextArea "prompt", KeyPointLabels "click", Text "expression"
    task, img = _task(fake_ls, 2106)
    task["data"]["expression"] = "the bright block"
    typed = "the small dark square in the corner"
    click = [kp(40.0, 50.0)]
    typed_memory, task_memory = AnswerMemory(), AnswerMemory()
    with_typed = local_predictor.predict_sequence(img, typed, _pixels(click), None, typed_memory)
    with_task = local_predictor.predict_sequence(img, "the bright block", _pixels(click), None, task_memory)
    assert abs(with_typed.score - with_task.score) > 1e-3  # the two answers can be told apart

    r = _post(gunicorn_url, task, config, [_typed(typed)])
    assert r.status_code == 200, r.text
    _check(r.json()["results"][0], local_predictor.predict_sequence(img, typed, [], None, AnswerMemory()),
           img.shape[:2])
    r = _post(gunicorn_url, task, config, click)  # the click alone, as the editor sends it
    assert r.status_code == 200, r.text
    _check(r.json()["results"][0], with_typed, img.shape[:2])
    # another task of the project does not inherit it
    other, other_img = _task(fake_ls, 2107)
    r = _post(gunicorn_url, other, config, click)
    _check(r.json()["results"][0], local_predictor.predict_sequence(other_img, "the bright block", _pixels(click),
                                                                    None, AnswerMemory()), other_img.shape[:2])
    # the TextArea cleared: the task's expression again
    r = _post(gunicorn_url, task, config, [_typed(""), *click])
    assert r.status_code == 200, r.text
    _check(r.json()["results"][0], with_task, img.shape[:2])


def test_click_jobs_use_the_interactive_queue(gunicorn_url, fake_ls, redis_url):
    from jobs.connections import rq_connection
    from jobs.queues import BATCH, INTERACTIVE, get_queue

    conn = rq_connection(redis_url)
    before = {q: get_queue(conn, q).finished_job_registry.count for q in (BATCH, INTERACTIVE)}
    task, _ = _task(fake_ls, 2103)
    r = _post(gunicorn_url, task, CONFIG_CLICKS, [kp(50.0, 50.0)])
    assert r.status_code == 200, r.text
    # the answer travels through the hand-off key, before RQ files the job as finished: wait for that
    wait_for(lambda: get_queue(conn, INTERACTIVE).finished_job_registry.count == before[INTERACTIVE] + 1, 10,
             "the click job in the interactive queue's finished registry")
    assert get_queue(conn, BATCH).finished_job_registry.count == before[BATCH]


def test_an_empty_context_still_suggests_nothing(gunicorn_url, fake_ls):
    task, _ = _task(fake_ls, 2104)
    r = _post(gunicorn_url, task, CONFIG_CLICKS, [])
    assert r.status_code == 200 and r.json()["results"] == [{"result": [], "score": 0.0, "model_version": "tiny-test"}]


def _no_value():
    item = kp(10.0, 10.0)
    del item["value"]
    return item


@pytest.mark.parametrize("result, message", [
    ([kp(150.0, 10.0)], "outside 0-100"),
    ([kp(10.0, -1.0)], "outside 0-100"),
    ([rect(80.0, 10.0, 30.0, 10.0)], "outside the image"),
    ([_no_value()], "value"),
    ([kp(10.0, 10.0, label="airplane")], "unknown label"),
    ([kp(1.0, 1.0)] * 1000, "more than 100 clicks"),
    ([kp(10.0, 10.0, w=None)], "original_width"),
], ids=["x>100", "y<0", "box-outside", "no-value", "unknown-label", "1000-points", "no-size"])
def test_bad_click_contexts_get_a_400(gunicorn_url, fake_ls, result, message):
    task, _ = _task(fake_ls, 2105)
    r = _post(gunicorn_url, task, CONFIG_CLICKS, result)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
