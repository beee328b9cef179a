"""A Label Studio that accepts Personal Access Tokens only, and training triggered by annotation webhooks by count
(issue 14, tests that can fail), against a real Label Studio 1.23.2.

The module runs its own Label Studio: a PAT is created through `POST /api/token/`, then the organisation's legacy
tokens are switched off (`POST /api/jwt/settings`), so the fixed legacy token that Label Studio still sends to
/setup is refused, and everything the backend does in Label Studio (image downloads, task paging, late predictions)
has to go through the PAT (LABEL_STUDIO_API_KEY). The backend fine-tunes every TRAIN_EVERY_N annotations.

1. annotations submitted through the API -> Label Studio's ANNOTATION_CREATED webhooks -> a fine-tune after the
   TRAIN_EVERY_N-th, not before, with no "Start training";
2. a project of > 100 tasks (105 annotated, imported with their annotations): "Start training" -> the fine-tune
   pages through all of them (its version records 105 samples); `refseg export --data ls:PROJECT` with the PAT
   exports all 105.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from e2e_flow import (
    CONFIG,
    brush_annotation,
    by_task,
    check_prediction,
    connect,
    create_project,
    created_stamp,
    expected,
    ml_version,
    predictions,
    retrieve,
)
from e2e_support import (
    TOKEN,
    backend_env,
    checkpoint_dir,
    label_studio_server,
    lineage_of,
    running_backend,
    running_redis,
    wait_for,
    wait_settled,
)

pytestmark = pytest.mark.e2e

TRAIN_EVERY_N = 3
N_PAGED = 120  # tasks in the paging project (> 100: two pages of LS's /api/tasks at page_size=100)
N_PAGED_ANNOTATED = 105


@pytest.fixture(scope="module")
def pat_ls(ls_venv, e2e_root, docroot):
    """A fresh Label Studio whose only way in is a Personal Access Token; yields (client on the PAT, PAT)."""
    with label_studio_server(ls_venv, e2e_root, docroot, "ls-pat") as legacy:
        created = legacy.post("/api/token/")
        pat = created["token"]
        assert pat.count(".") == 2, created  # a JWT (refresh token)
        legacy.post("/api/jwt/settings", json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": False})
        r = requests.get(legacy.url + "/api/projects", headers={"Authorization": f"Token {TOKEN}"}, timeout=30)
        assert r.status_code == 401, f"legacy token still accepted: HTTP {r.status_code}"
        ls = legacy.with_pat(pat)
        ls.get("/api/projects")
        yield ls, pat


@pytest.fixture(scope="module")
def pat_redis(e2e_root):
    with running_redis(e2e_root / "redis-pat") as url:
        yield url


@pytest.fixture(scope="module")
def pat_backend(pat_ls, pat_redis, tiny_checkpoint, e2e_root):
    ls, pat = pat_ls
    env = backend_env(redis_url=pat_redis, checkpoint=tiny_checkpoint, model_dir=e2e_root / "models-pat",
                      ls_url=ls.url, api_key=pat, TRAIN_EVERY_N_ANNOTATIONS=TRAIN_EVERY_N)
    with running_backend(env, e2e_root, "pat-") as backend:
        yield backend


def _train_jobs(redis_url: str) -> int:
    """Fine-tune jobs ever seen on the train queue (waiting, running, finished or failed)."""
    import redis
    from rq import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    conn = redis.Redis.from_url(redis_url)
    return (Queue("train", connection=conn).count + StartedJobRegistry("train", connection=conn).count
            + FinishedJobRegistry("train", connection=conn).count + FailedJobRegistry("train", connection=conn).count)


def _new_version(ls, pid: int, old: str, backend, timeout: float = 600) -> str:
    try:
        return wait_for(lambda: (lambda v: v if v != old else None)(ml_version(ls, pid)), timeout,
                        f"a new model version of project {pid}", 1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{backend.logs()}") from None


def test_annotation_webhooks_trigger_training_by_count(pat_ls, pat_backend, pat_redis, synth_samples, docroot,
                                                       e2e_root, local_model):
    import torch

    from refseg_model.predictor import RefSegPredictor

    ls, _ = pat_ls
    C = create_project(ls, "refseg-e2e-count", synth_samples[:6], docroot / "ds")
    connect(ls, C["id"], pat_backend.url)
    hooks = ls.get("/api/webhooks", params={"project": C["id"]})
    assert [h["url"] for h in hooks] == [pat_backend.url + "/webhook"], hooks
    base = ml_version(ls, C["id"])
    # predictions through the PAT: the workers download the images from LS's local-files storage with it
    retrieve(ls, C["id"])
    preds = by_task(wait_settled(pat_redis, lambda: (lambda p: p if len(p) >= 6 else None)(predictions(ls, C["id"])),
                                 120, "one prediction per task, prediction queues idle"))
    for tid, sample in C["tasks"].items():
        [pred] = preds[tid]
        check_prediction(pred, sample, expected(local_model, sample), base)

    annotated = list(C["tasks"].items())[:TRAIN_EVERY_N]
    for tid, sample in annotated[:-1]:
        # LS (without its own Redis) delivers the webhook inside this request: the backend has counted it
        ls.post(f"/api/tasks/{tid}/annotations", json=brush_annotation(sample["mask"]))
    assert _train_jobs(pat_redis) == 0, f"a fine-tune before the {TRAIN_EVERY_N}th annotation"
    assert ml_version(ls, C["id"]) == base
    tid, sample = annotated[-1]
    ls.post(f"/api/tasks/{tid}/annotations", json=brush_annotation(sample["mask"]))
    wait_for(lambda: _train_jobs(pat_redis) >= 1, 30, f"a fine-tune queued by the {TRAIN_EVERY_N}th annotation's "
             "webhook", 0.2)
    new = _new_version(ls, C["id"], base, pat_backend)
    assert new.startswith(base)
    lineage = lineage_of(pat_backend.url, new, C["id"], created_stamp(ls, C["id"]))
    assert [e["version"] for e in lineage] == [base, new] and lineage[-1]["samples"] == TRAIN_EVERY_N
    # the new version serves the project's predictions
    retrieve(ls, C["id"])

    def all_new():
        got = by_task(predictions(ls, C["id"]))
        return got if all(any(p["model_version"] == new for p in got.get(t, [])) for t in C["tasks"]) else None

    got = wait_settled(pat_redis, all_new, 120, f"predictions of {new}, prediction queues idle")
    torch.set_num_threads(1)
    model = RefSegPredictor.from_spec(str(checkpoint_dir(e2e_root / "models-pat", C["id"], new,
                                                     created_stamp(ls, C["id"]))), device="cpu")
    for tid, sample in list(C["tasks"].items())[:2]:
        [pred] = [p for p in got[tid] if p["model_version"] == new]
        check_prediction(pred, sample, expected(model, sample), new)
    print(f"\n[e2e] {TRAIN_EVERY_N} annotation webhooks -> fine-tune -> {new} (PAT-only Label Studio)")


def test_training_and_export_page_through_more_than_100_tasks_with_a_pat(pat_ls, pat_backend, synth_samples,
                                                                         docroot, tmp_path, capsys):
    from cli.main import main as refseg
    from formats.datasets.interchange import read_interchange
    from formats.datasets.sample_mask import load_sample_mask

    ls, pat = pat_ls
    samples = [s for s in synth_samples if s["mask"].any()]
    assert len(samples) >= N_PAGED, len(samples)
    samples = samples[:N_PAGED]
    project = ls.post("/api/projects", json={"title": "refseg-e2e-paging", "label_config": CONFIG})
    pid = project["id"]
    ls.post("/api/storages/localfiles", json={"project": pid, "title": "images", "path": str(docroot / "ds"),
                                              "use_blob_urls": False})
    # imported with their annotations (no backend connected yet: no webhooks, nothing counted)
    body = []
    for k, s in enumerate(samples):
        task = {"data": {"image": s["url"], "expression": s["expression"]}}
        if k < N_PAGED_ANNOTATED:
            task["annotations"] = [{"result": brush_annotation(s["mask"])["result"]}]
        body.append(task)
    r = ls.post(f"/api/projects/{pid}/import", json=body)
    assert (r["task_count"], r["annotation_count"]) == (N_PAGED, N_PAGED_ANNOTATED), r
    page1 = ls.get("/api/tasks", params={"project": pid, "page": 1, "page_size": 100})
    assert page1["total"] == N_PAGED and len(page1["tasks"]) == 100  # more than one page

    ml = connect(ls, pid, pat_backend.url)
    base = ml_version(ls, pid)
    ls.post(f"/api/ml/{ml['id']}/train", json={})
    new = _new_version(ls, pid, base, pat_backend)
    [entry] = [e for e in lineage_of(pat_backend.url, new, pid, created_stamp(ls, pid))
               if e["version"] == new]
    assert entry["samples"] == N_PAGED_ANNOTATED, f"the fine-tune read {entry['samples']} annotated tasks"

    out = tmp_path / "export"
    assert refseg(["export", "--data", f"ls:{pid}", "--ls-url", ls.url, "--ls-token", pat, "--to", "interchange",
                   str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == N_PAGED_ANNOTATED and report["skipped"] == 0, report
    exported = read_interchange(out)
    assert len(exported) == N_PAGED_ANNOTATED
    by_expr_mask = {}
    for s in samples[:N_PAGED_ANNOTATED]:
        by_expr_mask.setdefault(s["expression"], []).append(s["mask"])
    for s in exported:  # every exported sample is one of the imported annotations
        assert any(np.array_equal(load_sample_mask(s), m) for m in by_expr_mask.get(s.expression, [])), s.expression
    print(f"\n[e2e] {N_PAGED} tasks ({N_PAGED_ANNOTATED} annotated) paged with a PAT: fine-tune on "
          f"{entry['samples']} samples -> {new}, export {report['samples']} samples")
