"""End to end with a real Label Studio 1.23.2: everything is driven and checked through LS's REST API only.

1. project (Image + Text expression + TextArea prompt + BrushLabels), local-files storage, tasks, backend connected;
2. "Retrieve predictions" -> exactly one brush prediction per task with our model version, decoding (SDK) to
   the mask the model gives in this process for that task;
3. a batch that outlasts LS's /predict timeout still ends with one prediction per task (late results are
   POSTed to /api/predictions by the workers), and retrieving again stores nothing twice; some of its images
   come from a server that holds them until the retrieve call has returned, so results arrive late whatever
   the machine's speed;
4. an interactive request with a typed expression returns the mask;
5. submitted annotations + POST /api/ml/{id}/train -> a new model version; predictions retrieved afterwards
   carry it;
6. `refseg export` (ls:PROJECT and LS's own JSON export) gives back the submitted masks and expressions.
The tests run in file order and share state (one LS, one backend); a failed step fails the later ones. No fixed
sleeps: "nothing else arrives" is checked once the prediction queues are idle (e2e_support.wait_settled).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from e2e_flow import (
    by_task as _by_task,
    check_prediction as _check_prediction,
    connect as _connect,
    create_project,
    created_stamp,
    decode as _decode,
    expected as _expected,
    metric as _metric,
    ml_version as _ml_version,
    predictions as _predictions,
    retrieve as _retrieve,
)
from e2e_support import ML_TIMEOUT_PREDICT, PREDICT_BUDGET_S, ImageServer, checkpoint_dir, wait_for, wait_settled

from labelstudio.brush import brush_region

pytestmark = pytest.mark.e2e

N_SMALL = 6  # project A: predictions, interactive, annotations, training, export
N_BIG = 60  # project B: one "Retrieve predictions" that outlasts ML_TIMEOUT_PREDICT
HELD_EVERY = 6  # project B: every 6th task's image comes from a server that holds it until /predict has answered
N_ANNOTATED = 4
S: dict = {}  # state shared by the steps


@pytest.fixture(scope="module")
def data(synth_samples):
    assert len(synth_samples) >= N_SMALL + N_BIG
    return synth_samples


@pytest.fixture(scope="module")
def image_server(docroot):
    server = ImageServer(docroot)
    yield server
    server.close()


def _create_project(ls, title: str, samples, docroot) -> dict:
    return create_project(ls, title, samples, docroot / "ds")


# ------------------------------------------------------------------------------------------------------- steps
def test_project_and_backend_connected(label_studio, backend_url, data, docroot):
    ls = label_studio
    S["A"] = _create_project(ls, "refseg-e2e", data[:N_SMALL], docroot)
    ml = _connect(ls, S["A"]["id"], backend_url)
    S["A"]["ml"] = ml["id"]
    hooks = ls.get("/api/webhooks", params={"project": S["A"]["id"]})
    assert [h["url"] for h in hooks] == [backend_url + "/webhook"], hooks  # LS created the training webhook
    S["base_version"] = _ml_version(ls, S["A"]["id"])
    assert S["base_version"] == "tiny-e2e"


def test_retrieve_predictions_stores_one_brush_prediction_per_task(label_studio, backend_url, redis_url,
                                                                   local_model):
    ls, A = label_studio, S["A"]
    seconds = _retrieve(ls, A["id"])
    # every task has a prediction and no prediction job is left that could store another one
    preds = wait_settled(redis_url, lambda: (lambda p: p if len(p) >= N_SMALL else None)(_predictions(ls, A["id"])),
                         120, "one prediction per task, prediction queues idle")
    by_task = _by_task(_predictions(ls, A["id"]))
    assert sorted(by_task) == sorted(A["tasks"]), "a prediction per task, for these tasks only"
    for tid, sample in A["tasks"].items():
        assert len(by_task[tid]) == 1, f"task {tid}: {len(by_task[tid])} predictions"
        _check_prediction(by_task[tid][0], sample, _expected(local_model, sample), S["base_version"])
    nonempty = sum(bool(p["result"]) for p in preds)
    print(f"\n[e2e] retrieve {N_SMALL} tasks: HTTP {seconds:.1f} s, {len(preds)} predictions stored "
          f"({nonempty} with a mask), version {S['base_version']}")
    assert nonempty >= 1


def test_batch_longer_than_predict_timeout_ends_with_one_prediction_per_task(label_studio, backend_url, redis_url,
                                                                              data, docroot, local_model,
                                                                              image_server):
    """Some results arrive late whatever the machine's speed: every HELD_EVERY-th task's image comes from a
    server that holds its answer until LS's "Retrieve predictions" call has returned, so those tasks cannot be
    in the /predict answer; the workers POST them to LS afterwards."""
    ls = label_studio
    samples = [dict(s) for s in data[N_SMALL:N_SMALL + N_BIG]]
    held = set()
    for k, s in enumerate(samples):
        if k % HELD_EVERY == 0:
            s["url"] = image_server.url_for(s["path"])
            held.add(image_server.rel(s["path"]))
    B = S["B"] = _create_project(ls, "refseg-e2e-big", samples, docroot)
    _connect(ls, B["id"], backend_url)
    pending_before = _metric(backend_url, "refseg_predict_tasks_total", 'outcome="pending"')
    image_server.hold(held)
    t0 = time.monotonic()
    try:
        seconds = _retrieve(ls, B["id"])
    finally:
        image_server.release()
    assert seconds < ML_TIMEOUT_PREDICT + 5, f"the retrieve call took {seconds:.1f} s"
    wait_settled(redis_url, lambda: len(_predictions(ls, B["id"])) >= N_BIG, 300,
                 f"{N_BIG} predictions, prediction queues idle")
    all_stored = time.monotonic() - t0
    by_task = _by_task(_predictions(ls, B["id"]))
    assert sorted(by_task) == sorted(B["tasks"])
    assert all(len(v) == 1 for v in by_task.values()), {k: len(v) for k, v in by_task.items() if len(v) != 1}
    late = _metric(backend_url, "refseg_predict_tasks_total", 'outcome="pending"') - pending_before
    served = image_server.requested(held, since=t0)
    print(f"\n[e2e] big batch: {N_BIG} tasks, retrieve HTTP {seconds:.1f} s (backend budget {PREDICT_BUDGET_S} s, "
          f"LS ML_TIMEOUT_PREDICT {ML_TIMEOUT_PREDICT} s), {len(held)} images held until it returned, "
          f"{int(late)} delivered late, all {N_BIG} stored after {all_stored:.1f} s")
    assert served, "the workers never asked the image server for a held image"
    assert late > 0, "nothing was delivered late although some images were held until /predict had answered"
    held_tasks = [tid for tid, s in B["tasks"].items() if s["url"].startswith(image_server.url)]
    assert len(held_tasks) == len(range(0, N_BIG, HELD_EVERY))
    for tid in sorted(set(list(B["tasks"])[:: max(1, N_BIG // 5)]) | set(held_tasks[:3])):  # late ones included
        _check_prediction(by_task[tid][0], B["tasks"][tid], _expected(local_model, B["tasks"][tid]),
                          S["base_version"])
    # retrieving again: LS skips tasks that have a prediction of the current version; nothing is stored twice
    requests_before = len(image_server.requested())
    _retrieve(ls, B["id"])
    wait_settled(redis_url, lambda: True, 60, "prediction queues idle after the second retrieve")
    assert len(_predictions(ls, B["id"])) == N_BIG
    assert len(image_server.requested()) == requests_before  # nothing was predicted again


def test_interactive_request_returns_a_mask(label_studio, backend_url, local_model):
    ls, A = label_studio, S["A"]
    # an expression that the (tiny, untrained) model answers with a non-empty mask
    for tid, sample in A["tasks"].items():
        for text in (sample["expression"], "the large building", "the vehicle on the left", "the pond"):
            [exp] = local_model.predict(sample["image"], [text])
            if exp.mask.any():
                break
        if exp.mask.any():
            break
    else:
        pytest.fail("the model gives empty masks for every expression tried")
    t0 = time.monotonic()
    r = ls.post(f"/api/ml/{A['ml']}/interactive-annotating", json={"task": tid, "context": {"result": [
        {"type": "textarea", "from_name": "prompt", "to_name": "image", "origin": "manual",
         "value": {"text": [text]}}]}})
    seconds = time.monotonic() - t0
    assert "data" in r, r
    res = r["data"]
    assert res["model_version"] == S["base_version"]
    [region] = res["result"]
    np.testing.assert_array_equal(_decode(region), exp.mask)
    print(f"\n[e2e] interactive {text!r} on task {tid}: {int(exp.mask.sum())} px in {seconds:.2f} s")
    assert len(_by_task(_predictions(ls, A["id"]))[tid]) == 1  # interactive results are not stored


def test_annotations_and_train_give_a_new_version_carried_by_later_predictions(label_studio, backend_url, e2e_root,
                                                                                redis_url, backend_logs):
    import torch

    from refseg_model.predictor import RefSegPredictor

    ls, A = label_studio, S["A"]
    submitted = {}
    for k, (tid, sample) in enumerate(list(A["tasks"].items())[:N_ANNOTATED]):
        region = brush_region(sample["mask"], from_name="mask", to_name="image", label="target")
        result = [region]
        expression = sample["expression"]
        if k == 0:  # an annotator who typed a better expression: it wins over the task data's
            expression = "the typed expression for " + sample["expression"]
            result.append({"id": "prompt0", "type": "textarea", "from_name": "prompt", "to_name": "image",
                           "origin": "manual", "value": {"text": [expression]}})
        ann = ls.post(f"/api/tasks/{tid}/annotations", json={"result": result, "was_cancelled": False,
                                                             "ground_truth": False, "lead_time": 4.2})
        submitted[tid] = (_decode(ann["result"][0]), expression)
        np.testing.assert_array_equal(submitted[tid][0], sample["mask"])  # LS stored the RLE unchanged
    S["submitted"] = submitted
    ls.post(f"/api/ml/{A['ml']}/train", json={})
    t0 = time.monotonic()
    try:
        new = wait_for(lambda: (lambda v: v if v != S["base_version"] else None)(_ml_version(ls, A["id"])), 600,
                       "a new model version after training", 2.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{backend_logs()}") from None
    trained = time.monotonic() - t0
    S["new_version"] = new
    assert new.startswith(S["base_version"]) and new != S["base_version"]
    seconds = _retrieve(ls, A["id"])

    def all_new():
        by_task = _by_task(_predictions(ls, A["id"]))
        return by_task if all(any(p["model_version"] == new for p in by_task.get(t, [])) for t in A["tasks"]) else None

    by_task = wait_settled(redis_url, all_new, 120, f"predictions of {new} for every task, prediction queues idle")
    torch.set_num_threads(1)
    ckpt = checkpoint_dir(e2e_root / "models", A["id"], new, created_stamp(ls, A["id"]))
    model = RefSegPredictor.from_spec(str(ckpt), device="cpu")
    for tid, sample in A["tasks"].items():
        versions = sorted(p["model_version"] for p in by_task[tid])
        assert versions == sorted([S["base_version"], new]), (tid, versions)
        [pred] = [p for p in by_task[tid] if p["model_version"] == new]
        _check_prediction(pred, sample, _expected(model, sample), new)
    print(f"\n[e2e] {len(submitted)} annotations -> train -> version {new} after {trained:.1f} s; "
          f"retrieve again: HTTP {seconds:.1f} s, {sum(len(v) for v in by_task.values())} predictions stored "
          f"({len(by_task)} tasks x 2 versions)")


def test_export_gives_back_the_submitted_masks_and_expressions(label_studio, docroot, tmp_path, capsys):
    from cli.main import main as refseg
    from formats.datasets.interchange import read_interchange
    from formats.datasets.rrsisd import read_rrsisd
    from formats.datasets.sample_mask import load_sample_mask

    ls, A, submitted = label_studio, S["A"], S["submitted"]
    token = ls.session.headers["Authorization"].split()[1]

    def check(samples, by_task=True):
        assert len(samples) == len(submitted)
        left = dict(submitted)
        for s in samples:
            mask = load_sample_mask(s)
            if by_task:
                tid = int(Path(s.mask).stem.removeprefix("task"))
            else:
                [tid] = [t for t, (m, e) in left.items() if e == s.expression and np.array_equal(m, mask)] or [None]
                assert tid is not None, f"exported {s.expression!r} matches no submitted annotation"
            m, e = left.pop(tid)
            np.testing.assert_array_equal(mask, m)
            assert s.expression == e

    # through the API
    out = tmp_path / "api"
    assert refseg(["export", "--data", f"ls:{A['id']}", "--ls-url", ls.url, "--ls-token", token, "--to",
                   "interchange", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == len(submitted) and report["skipped"] == 0, report
    check(read_interchange(out))
    # LS's own JSON export, offline (images from the local-files folder), to RRSIS-D
    export = ls.api("GET", f"/api/projects/{A['id']}/export", params={"exportType": "JSON"})
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    out = tmp_path / "rrsisd"
    assert refseg(["export", "--data", f"ls-json:{path}", "--images-root", str(docroot), "--to", "rrsis-d",
                   str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == len(submitted), report
    check(read_rrsisd(out), by_task=False)
