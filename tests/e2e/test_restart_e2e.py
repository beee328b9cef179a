"""The end-to-end flow twice in a row against the same runs/ (MODEL_DIR) and the same Redis (AOF), each time with a
fresh Label Studio at the same address, whose first project is again id 1 (issue 14, "Done when" 1).

Each life: Redis (AOF, same dir and port), a fresh Label Studio (new data dir, same port), the backend
(workers + gunicorn) -> project 1 with 6 tasks -> the backend serves the base version -> "Retrieve predictions":
one base-version prediction per task, the base model's masks -> 4 annotations + "Start training" -> a new version
whose lineage is [base, new] -> "Retrieve predictions" again: the new version's masks.

The first life then dies the way a crashed deployment does, leaving behind what issue 14 ("Why" 2) found carried
into the next life: batch jobs queued for project 1 (the inference worker SIGKILLed while an image download
hangs, the rest of the batch still queued, /predict's pending markers set) and a fine-tune of project 1 in
progress (the train worker SIGKILLed mid-run: its `train:running` marker and RQ registration stay). The second
life must neither serve the first life's fine-tuned version nor receive the first life's predictions nor get
placeholders for them, and its "Start training" must train.
"""
from __future__ import annotations

import time

import pytest
from e2e_flow import (
    brush_annotation,
    by_task,
    check_prediction,
    connect,
    create_project,
    created_stamp,
    delete_predictions,
    expected,
    ml_version,
    predictions,
    retrieve,
)
from e2e_support import (
    Backend,
    ImageServer,
    backend_env,
    checkpoint_dir,
    free_port,
    label_studio_server,
    lineage_of,
    start_redis,
    stop_processes,
    wait_for,
    wait_settled,
)

pytestmark = pytest.mark.e2e

N_TASKS = 6
N_ANNOTATED = 4


class SecondLifeFailed(AssertionError):
    """The flow passed in the first life and failed in the second."""


def _delivered_markers(redis_url: str) -> int:
    """Tasks that /predict counts as just delivered ("posted:<version>" markers, for ANSWERED_GRACE_S after an
    inline answer or POSTED_GRACE_S after a late post): a retrieve meanwhile answers them "pending"."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    return sum((conn.get(k) or b"").startswith(b"posted:") for k in conn.scan_iter("refseg:pending:*"))


def _queue_counts(redis_url: str, name: str) -> tuple:
    import redis
    from rq import Queue
    from rq.registry import StartedJobRegistry

    conn = redis.Redis.from_url(redis_url)
    return Queue(name, connection=conn).count, StartedJobRegistry(name, connection=conn).count


def _flow(life: int, ls, backend: Backend, redis_url: str, samples, base: str, model_dir, local_model,
          wait_s: float) -> dict:
    """The e2e flow on a fresh Label Studio; returns the project (its id and tasks) and the new version."""
    import torch

    from refseg_model.predictor import RefSegPredictor

    A = create_project(ls, "refseg-e2e", samples)
    assert A["id"] == 1, f"life {life}: a fresh Label Studio's first project is id 1, got {A['id']}"
    ml = connect(ls, A["id"], backend.url)
    assert ml["model_version"] == base, f"life {life}: project 1 is served {ml['model_version']}, not the base"
    assert ml_version(ls, A["id"]) == base

    # predictions: exactly one per task, the base version's masks (nothing from another life's jobs)
    retrieve(ls, A["id"])
    got = by_task(wait_settled(redis_url, lambda: (lambda p: p if len({x["task"] for x in p}) >= N_TASKS else None)(
        predictions(ls, A["id"])), wait_s, f"life {life}: a prediction for every task, prediction queues idle"))
    assert sorted(got) == sorted(A["tasks"]), f"life {life}: predictions for tasks {sorted(got)}"
    for tid, sample in A["tasks"].items():
        assert len(got[tid]) == 1, f"life {life}: task {tid} has {len(got[tid])} predictions: " \
                                   f"{[p['model_version'] for p in got[tid]]}"
        check_prediction(got[tid][0], sample, expected(local_model, sample), base)

    # annotations + "Start training" -> a new version trained from the base
    for tid, sample in list(A["tasks"].items())[:N_ANNOTATED]:
        ls.post(f"/api/tasks/{tid}/annotations", json=brush_annotation(sample["mask"]))
    ls.post(f"/api/ml/{ml['id']}/train", json={})
    t0 = time.monotonic()
    try:
        new = wait_for(lambda: (lambda v: v if v != base else None)(ml_version(ls, A["id"])), wait_s * 2,
                       f"life {life}: a new model version after Start training", 1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{backend.logs()}") from None
    trained = time.monotonic() - t0
    stamp = created_stamp(ls, A["id"])
    lineage = [e["version"] for e in lineage_of(backend.url, new, A["id"], stamp)]
    assert lineage == [base, new], f"life {life}: lineage of {new} is {lineage}"

    # re-predict: every task gets the new version's prediction
    retrieve(ls, A["id"])

    def all_new():
        p = by_task(predictions(ls, A["id"]))
        return p if all(any(x["model_version"] == new for x in p.get(t, [])) for t in A["tasks"]) else None

    got = wait_settled(redis_url, all_new, wait_s, f"life {life}: predictions of {new} for every task")
    torch.set_num_threads(1)
    model = RefSegPredictor.from_spec(str(checkpoint_dir(model_dir, A["id"], new, stamp)), device="cpu")
    for tid, sample in A["tasks"].items():
        assert sorted(p["model_version"] for p in got[tid]) == sorted([base, new]), (life, tid)
        [pred] = [p for p in got[tid] if p["model_version"] == new]
        check_prediction(pred, sample, expected(model, sample), new)
    print(f"\n[e2e] life {life}: project 1 predicted with {base}, trained -> {new} in {trained:.1f} s, re-predicted")
    return {"project": A, "ml": ml["id"], "version": new}


def _crash(ls, backend: Backend, redis_url: str, images: ImageServer, project: dict, ml_id: int) -> None:
    """Leave project 1's work half done, as a deployment that dies does: a batch whose first job hangs on an
    image download when the inference worker is SIGKILLed (the rest still queued, /predict's pending markers
    set), then a fine-tune whose train worker is SIGKILLed while it downloads the annotated images."""
    held = {images.rel(s["path"]) for s in project["tasks"].values()}
    images.hold(held)
    # the re-predict just delivered every task: until that lapses (seconds) a retrieve would answer "pending"
    wait_for(lambda: _delivered_markers(redis_url) == 0, 150, "the re-predict's delivery markers to lapse", 0.2)
    t0 = time.monotonic()
    delete_predictions(ls, project["id"])  # else LS skips tasks that have a prediction of the current version
    retrieve(ls, project["id"])
    wait_for(lambda: images.requested(held, since=t0), 60, "the inference worker to ask for a held image", 0.2)
    backend.kill("worker-infer")
    queued, started = _queue_counts(redis_url, "batch")
    assert queued >= 1 and started == 1, f"batch queue: {queued} queued, {started} started"
    t1 = time.monotonic()
    ls.post(f"/api/ml/{ml_id}/train", json={})
    wait_for(lambda: _queue_counts(redis_url, "train")[1] == 1 and images.requested(held, since=t1), 120,
             "the fine-tune to start and ask for a held image", 0.2)
    backend.kill("worker-train")
    assert not predictions(ls, project["id"])


def test_flow_passes_twice_on_the_same_runs_and_redis_with_a_fresh_label_studio(ls_venv, e2e_root, docroot,
                                                                               tiny_checkpoint, synth_samples,
                                                                               local_model):
    root = e2e_root / "restart"
    (root / "redis").mkdir(parents=True)
    model_dir = root / "runs"
    redis_port, ls_port = free_port(), free_port()
    ls_url = f"http://127.0.0.1:{ls_port}"
    base = "tiny-e2e"
    images = ImageServer(docroot)  # the same image URLs in both lives, downloaded directly by the workers
    samples = [dict(s, url=images.url_for(s["path"])) for s in synth_samples[:N_TASKS]]

    def life(n: int, crash: bool, wait_s: float) -> dict:
        redis_proc, redis_url = start_redis(root / "redis", port=redis_port, appendonly=True)
        try:
            env = backend_env(redis_url=redis_url, checkpoint=tiny_checkpoint, model_dir=model_dir, ls_url=ls_url)
            with label_studio_server(ls_venv, root, docroot, f"ls-life{n}", port=ls_port) as ls:
                backend = Backend(env, root, f"life{n}-").start()
                try:
                    out = _flow(n, ls, backend, redis_url, samples, base, model_dir, local_model, wait_s)
                    if crash:
                        _crash(ls, backend, redis_url, images, out["project"], out["ml"])
                    return out
                finally:
                    backend.stop()
                    images.release()
        finally:
            stop_processes([(redis_proc, None)])  # SIGTERM: Redis writes the AOF out before it exits

    try:
        first = life(1, crash=True, wait_s=300)
        try:
            second = life(2, crash=False, wait_s=120)
        except AssertionError as exc:
            raise SecondLifeFailed(f"second life (same runs/ and Redis, fresh Label Studio): {exc}") from exc
    finally:
        images.close()
    assert (root / "redis" / "appendonlydir").is_dir() or list((root / "redis").glob("*.aof"))
    print(f"\n[e2e] two lives on one runs/ + Redis: {first['version']} then {second['version']}")
