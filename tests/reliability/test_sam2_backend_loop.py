"""The full backend loop with a SAM 2.1 model (issue 12): a tiny SAM 2.1 checkpoint (the `tiny-sam2.1` preset,
built through Meta's sam2 package) as the base model of its own deployment (real Redis, RQ workers, gunicorn):
batch predictions, "Start training" -> fine-tune -> promotion -> predictions from the promoted version, whose
masks are exactly what the promoted checkpoint predicts in process."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from backend_support import CONFIG_TEXT, STAMP, add_annotated_project, png, project_key, project_obj, scene, wait_for
from label_studio_sdk.converter.brush import decode_rle
from rel_stack import Stack


@pytest.fixture(scope="module")
def sam2_stack(tmp_path_factory, fake_ls):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    import torch

    from refseg_model.checkpoint import load_model, save_checkpoint

    root = tmp_path_factory.mktemp("sam2-loop")
    torch.manual_seed(0)
    model, _ = load_model("preset:tiny-sam2.1")
    assert type(model.sam).__name__ == "Sam2Segmenter"
    ckpt = str(save_checkpoint(model, root / "base-ckpt", "tiny-sam21"))
    s = Stack(root / "stack", ckpt, fake_ls.url)
    try:
        yield s.start()
    finally:
        s.close()


def _predict(stack, ls, project: int, tid: int):
    img, _ = scene(tid)
    path = f"/data/upload/{project}/q{tid}.png"
    ls.files[path] = png(img)
    body = {"tasks": [{"id": tid, "data": {"image": path, "expression": "the bright block"}}],
            "project": f"{project}.{STAMP}", "label_config": CONFIG_TEXT, "params": {"context": None}}
    r = stack.post("/predict", json=body)
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert "error" not in res, res
    return img, res


def test_tiny_sam21_predicts_finetunes_promotes_and_serves_the_new_version(sam2_stack, fake_ls):
    project = 91
    add_annotated_project(fake_ls, project, 9100, 5)
    setup = {"project": f"{project}.{STAMP}", "schema": CONFIG_TEXT}
    assert sam2_stack.post("/setup", json=setup).json()["model_version"] == "tiny-sam21"
    _, first = _predict(sam2_stack, fake_ls, project, 9190)
    assert first["model_version"] == "tiny-sam21"

    r = sam2_stack.post("/webhook", json={"action": "START_TRAINING", "project": project_obj(project)})
    assert r.status_code == 201 and r.json()["finetune"] == "enqueued"

    def promoted():
        v = sam2_stack.post("/setup", json=setup).json()["model_version"]
        return v if v != "tiny-sam21" else None

    version = wait_for(promoted, 400, "the fine-tuned SAM 2.1 version", 1.0)
    assert version == f"tiny-sam21-p{project}-ft1"
    key = project_key(project, fake_ls.url)
    checkpoint = sam2_stack.state().hget(f"refseg:project:{key}:model", "checkpoint")
    assert checkpoint.endswith(f"/{key}/{version}")

    img, res = _predict(sam2_stack, fake_ls, project, 9191)
    assert res["model_version"] == version
    import torch

    from refseg_model.predictor import RefSegPredictor

    torch.set_num_threads(1)  # the workers run with one thread: same arithmetic
    [exp] = RefSegPredictor.from_spec(checkpoint).predict_many(lambda k: img, [(0, "the bright block")])
    if exp.mask.any():
        got = decode_rle(res["result"][0]["value"]["rle"]).reshape(48, 64, 4)[:, :, 3] > 0
        np.testing.assert_array_equal(got, exp.mask)
    else:
        assert res["result"] == []
