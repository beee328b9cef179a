"""End to end with a real Label Studio 1.23.2: everything is driven and checked through LS's REST API only.

1. project (Image + Text expression + TextArea prompt + BrushLabels), local-files storage, tasks, backend connected;
2. "Retrieve predictions" -> exactly one brush prediction per task with our model version, decoding (SDK) to
   the mask the model gives in this process for that task;
3. a batch that outlasts LS's /predict timeout still ends with one prediction per task (late results are
   POSTed to /api/predictions by the workers), and retrieving again stores nothing twice;
4. an interactive request with a typed expression returns the mask;
5. submitted annotations + POST /api/ml/{id}/train -> a new model version; predictions retrieved afterwards
   carry it;
6. `refseg export` (ls:PROJECT and LS's own JSON export) gives back the submitted masks and expressions.
The tests run in file order and share state (one LS, one backend); a failed step fails the later ones.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from e2e_support import ML_TIMEOUT_PREDICT, PREDICT_BUDGET_S, wait_for
from label_studio_sdk.converter.brush import decode_rle

from labelstudio.brush import brush_region

pytestmark = pytest.mark.e2e

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Text name="expr" value="$expression"/>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1" showSubmitButton="true"/>
  <BrushLabels name="mask" toName="image"><Label value="target" background="#ff0000"/></BrushLabels>
</View>"""
N_SMALL = 6  # project A: predictions, interactive, annotations, training, export
N_BIG = 60  # project B: one "Retrieve predictions" that outlasts ML_TIMEOUT_PREDICT
N_ANNOTATED = 4
S: dict = {}  # state shared by the steps


def _decode(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    flat = decode_rle(region["value"]["rle"])
    assert flat.size == h * w * 4, f"RLE decodes to {flat.size} values, expected {h}x{w}x4"
    return flat.reshape(h, w, 4)[:, :, 3] > 0


@pytest.fixture(scope="module")
def data(e2e_root, docroot):
    """Synthetic 128 px scenes (3 expressions each) in the local-files storage folder docroot/ds."""
    from formats.datasets.interchange import read_interchange
    from formats.datasets.sample_mask import load_sample_mask
    from formats.images import load_image
    from refseg_model.data.synth import write_dataset

    synth = e2e_root / "synth"
    write_dataset(synth, n_images=(N_SMALL + N_BIG + 2) // 3, size=128, seed=5, expressions_per_image=3,
                  progress=False)
    out = []
    for s in read_interchange(synth):
        dst = docroot / "ds" / Path(s.image).name
        if not dst.exists():
            shutil.copyfile(s.image, dst)
        out.append({"url": f"/data/local-files/?d=ds/{dst.name}", "expression": s.expression,
                    "image": load_image(dst), "mask": load_sample_mask(s)})
    assert len(out) >= N_SMALL + N_BIG
    return out


@pytest.fixture(scope="module")
def local_model(tiny_checkpoint):
    """The model as the workers run it (same weights, 1 thread: identical arithmetic)."""
    import torch

    from refseg_model.predictor import RefSegPredictor

    torch.set_num_threads(1)
    return RefSegPredictor.from_spec(tiny_checkpoint, device="cpu")


def _create_project(ls, title: str, samples, docroot) -> dict:
    project = ls.post("/api/projects", json={"title": title, "label_config": CONFIG})
    pid = project["id"]
    ls.post("/api/storages/localfiles", json={"project": pid, "title": "images", "path": str(docroot / "ds"),
                                              "use_blob_urls": False})
    r = ls.post(f"/api/projects/{pid}/import",
                json=[{"data": {"image": s["url"], "expression": s["expression"]}} for s in samples])
    assert r["task_count"] == len(samples)
    tasks = _tasks(ls, pid)
    assert len(tasks) == len(samples)
    by_url_expr = {(s["url"], s["expression"]): s for s in samples}
    return {"id": pid, "tasks": {t["id"]: by_url_expr[(t["data"]["image"], t["data"]["expression"])] for t in tasks}}


def _tasks(ls, pid: int) -> list:
    out, page = [], 1
    while True:
        body = ls.get("/api/tasks", params={"project": pid, "page": page, "page_size": 100})
        out += body["tasks"]
        if len(out) >= body["total"] or not body["tasks"]:
            return out
        page += 1


def _connect(ls, pid: int, backend_url: str) -> dict:
    ml = ls.post("/api/ml", json={"url": backend_url, "project": pid, "title": "refseg-assist", "is_interactive": True})
    assert ml["state"] == "CO", ml
    return ml


def _predictions(ls, pid: int) -> list:
    return ls.get("/api/predictions", params={"project": pid})


def _by_task(preds) -> dict:
    out = {}
    for p in preds:
        out.setdefault(p["task"], []).append(p)
    return out


def _retrieve(ls, pid: int) -> float:
    t0 = time.monotonic()
    ls.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": True, "excluded": []}}, timeout=ML_TIMEOUT_PREDICT * 4 + 60)
    return time.monotonic() - t0


def _ml_version(ls, pid: int) -> str:
    """GET /api/ml?project= makes LS call the backend's /health + /setup and store the version it reports."""
    [ml] = ls.get("/api/ml", params={"project": pid})
    return ml["model_version"]


def _check_prediction(pred: dict, sample: dict, expected, version: str) -> None:
    assert pred["model_version"] == version
    h, w = sample["image"].shape[:2]
    if not expected.mask.any():
        assert pred["result"] == []
        return
    [region] = pred["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["target"]
    assert (region["original_height"], region["original_width"]) == (h, w)
    mask = _decode(region)
    assert mask.shape == (h, w)
    np.testing.assert_array_equal(mask, expected.mask)
    assert abs(pred["score"] - expected.score) < 1e-4


def _expected(model, sample):
    [p] = model.predict_many(lambda i: sample["image"], [(0, sample["expression"])])
    return p


def _metric(backend_url: str, name: str, label: str) -> float:
    import requests

    text = requests.get(backend_url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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


def test_retrieve_predictions_stores_one_brush_prediction_per_task(label_studio, backend_url, local_model):
    ls, A = label_studio, S["A"]
    seconds = _retrieve(ls, A["id"])
    preds = wait_for(lambda: (lambda p: p if len(p) >= N_SMALL else None)(_predictions(ls, A["id"])), 120,
                     "one prediction per task", 0.5)
    time.sleep(1.0)  # nothing else may arrive
    by_task = _by_task(_predictions(ls, A["id"]))
    assert sorted(by_task) == sorted(A["tasks"]), "a prediction per task, for these tasks only"
    for tid, sample in A["tasks"].items():
        assert len(by_task[tid]) == 1, f"task {tid}: {len(by_task[tid])} predictions"
        _check_prediction(by_task[tid][0], sample, _expected(local_model, sample), S["base_version"])
    nonempty = sum(bool(p["result"]) for p in preds)
    print(f"\n[e2e] retrieve {N_SMALL} tasks: HTTP {seconds:.1f} s, {len(preds)} predictions stored "
          f"({nonempty} with a mask), version {S['base_version']}")
    assert nonempty >= 1


def test_batch_longer_than_predict_timeout_ends_with_one_prediction_per_task(label_studio, backend_url, data,
                                                                              docroot, local_model):
    ls = label_studio
    B = S["B"] = _create_project(ls, "refseg-e2e-big", data[N_SMALL:N_SMALL + N_BIG], docroot)
    _connect(ls, B["id"], backend_url)
    pending_before = _metric(backend_url, "refseg_predict_tasks_total", 'outcome="pending"')
    t0 = time.monotonic()
    seconds = _retrieve(ls, B["id"])
    assert seconds < ML_TIMEOUT_PREDICT + 5, f"the retrieve call took {seconds:.1f} s"
    wait_for(lambda: len(_predictions(ls, B["id"])) >= N_BIG, 300, f"{N_BIG} predictions", 1.0)
    all_stored = time.monotonic() - t0
    time.sleep(2.0)
    by_task = _by_task(_predictions(ls, B["id"]))
    assert sorted(by_task) == sorted(B["tasks"])
    assert all(len(v) == 1 for v in by_task.values()), {k: len(v) for k, v in by_task.items() if len(v) != 1}
    late = _metric(backend_url, "refseg_predict_tasks_total", 'outcome="pending"') - pending_before
    print(f"\n[e2e] big batch: {N_BIG} tasks, retrieve HTTP {seconds:.1f} s (backend budget {PREDICT_BUDGET_S} s, "
          f"LS ML_TIMEOUT_PREDICT {ML_TIMEOUT_PREDICT} s), {int(late)} delivered late, all {N_BIG} stored after "
          f"{all_stored:.1f} s")
    assert late > 0, "the batch fitted in /predict: make N_BIG larger (nothing was delivered late)"
    for tid in list(B["tasks"])[:: max(1, N_BIG // 5)]:  # a sample of them, late ones included
        _check_prediction(by_task[tid][0], B["tasks"][tid], _expected(local_model, B["tasks"][tid]),
                          S["base_version"])
    # retrieving again: LS skips tasks that have a prediction of the current version; nothing is stored twice
    _retrieve(ls, B["id"])
    time.sleep(2.0)
    assert len(_predictions(ls, B["id"])) == N_BIG


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
                                                                                backend_logs):
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

    by_task = wait_for(all_new, 120, f"predictions of {new} for every task", 0.5)
    torch.set_num_threads(1)
    ckpt = e2e_root / "models" / str(A["id"]) / new
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
