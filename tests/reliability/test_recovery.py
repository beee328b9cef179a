"""Recovery after crashes and restarts, against a deployment of its own (Redis with AOF, workers, gunicorn):
jobs a dead worker left started are failed with a reason and their fine-tune markers cleared (at a worker's
start-up, and by any living worker once the dead one's liveness key is gone); a fine-tune queued before a Redis
restart runs after it; a fine-tune that makes the model worse is rejected (FINETUNE_PROMOTE_TOLERANCE=0)."""
from __future__ import annotations

import json
import threading
import time

import pytest
from backend_support import CONFIG_TEXT, add_annotated_project, iso, png, project_key, project_obj, scene, uid, wait_for
from rel_stack import Stack
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from test_faults import GatedImages

FINAL = ("promoted", "rejected", "skipped", "failed")


@pytest.fixture(scope="module")
def rstack(tmp_root, tiny_checkpoint, fake_ls):
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    # tolerance 0 (the shipped default): a fine-tune is promoted only if not worse on the held-out tasks; a high
    # learning rate so that 4 steps surely change the model
    s = Stack(tmp_root / "recovery", tiny_checkpoint, fake_ls.url, FINETUNE_PROMOTE_TOLERANCE=0, FINETUNE_LR=0.05,
              FINETUNE_STEPS=4, FINETUNE_HOLDOUT=0.25, LOG_LEVEL="INFO")
    try:
        yield s.start()
    finally:
        s.close()


def _ft_status(stack, key: str) -> dict:
    return {k: json.loads(v) for k, v in stack.state().hgetall(f"refseg:stats:finetune:{key}").items()}


def _wait_ft_end(stack, key: str, job_id_not: str = "", timeout: float = 240) -> dict:
    """The fine-tune status of `key` once a run other than `job_id_not` has ended."""
    def ended():
        st = _ft_status(stack, key)
        return st if st.get("state") in FINAL and st.get("job") != job_id_not else None
    return wait_for(ended, timeout, f"a fine-tune of {key} to end", 0.5)


def _job(stack, job_id: str) -> Job:
    return Job.fetch(job_id, connection=stack.rq(), serializer=JSONSerializer)


def _train(stack, pid: int) -> str:
    r = stack.post("/webhook", json={"action": "START_TRAINING", "project": project_obj(pid)})
    assert r.status_code == 201, r.text
    return r.json()["finetune"]


def test_a_restarted_trainer_fails_the_finetune_it_left_started_and_the_next_trigger_trains(rstack, fake_ls):
    """The trainer is SIGKILLed mid fine-tune and restarted under the same name (a container restart, a
    supervisor): at start-up it fails the job it left started, with the reason, and clears the project's marker;
    the first "Start training" after the restart trains."""
    add_annotated_project(fake_ls, 71, 7100, 4)
    key = project_key(71, fake_ls.url)
    first = fake_ls.tasks[7100]
    gated = GatedImages(fake_ls.files[first["data"]["image"]])
    first["data"] = {**first["data"], "image": gated.url + "/t7100.png"}  # the trainer hangs downloading it
    state = rstack.state()
    try:
        assert _train(rstack, 71) == "enqueued"
        wait_for(lambda: gated.hits >= 1, 90, "the trainer to pull project 71")
        dead_job = state.get(f"refseg:project:{key}:train:running")
        assert dead_job
        rstack.kill_worker("train")
        assert _job(rstack, dead_job).get_status() == JobStatus.STARTED  # RQ alone would keep it for hours
        gated.gate.set()
        rstack.start_worker("train", "train")  # the same name: a restart
        rstack.wait_workers(["train"])
        wait_for(lambda: state.get(f"refseg:project:{key}:train:running") is None, 60,
                 "the restarted trainer to clear the dead job's marker")
        job = _job(rstack, dead_job)
        assert job.get_status() == JobStatus.FAILED
        reason = job.latest_result().exc_string
        assert "abandoned" in reason and "restarted" in reason, reason
        assert _ft_status(rstack, key)["state"] == "failed"
        # the first trigger after the restart trains
        assert _train(rstack, 71) == "enqueued"
        st = _wait_ft_end(rstack, key, dead_job)
        assert st["state"] in ("promoted", "rejected"), st  # it ran: trained and was judged
    finally:
        gated.close()


def test_a_prediction_job_left_started_by_a_dead_worker_is_failed_with_the_reason(rstack, fake_ls):
    """The inference worker is SIGKILLed mid job and another worker (another name) takes over: once the dead
    worker's liveness key is gone (15 s) and the grace is over (8 s), the living worker fails the abandoned job."""
    gated = GatedImages(png(scene(7201)[0]))
    fake_ls.add_project(72, CONFIG_TEXT, iso(1))
    task = {"id": 7201, "data": {"image": gated.url + "/a.png", "expression": "the block"}}
    out = {}
    body = {"tasks": [task], "project": "72.1", "label_config": CONFIG_TEXT, "params": {"context": None}}
    asker = threading.Thread(target=lambda: out.setdefault("r", rstack.post("/predict", json=body, timeout=60)))
    try:
        asker.start()
        wait_for(lambda: gated.hits >= 1, 60, "the worker to start the job")
        from rq.registry import StartedJobRegistry

        [job_id] = StartedJobRegistry("batch", connection=rstack.rq()).get_job_ids(cleanup=False)
        rstack.kill_worker("infer")
        rstack.start_worker("infer2", "interactive,batch")
        rstack.wait_workers(["infer2"])
        t0 = time.monotonic()
        wait_for(lambda: _job(rstack, job_id).get_status() == JobStatus.FAILED, 90,
                 "a living worker to fail the abandoned job")
        assert time.monotonic() - t0 < 60
        reason = _job(rstack, job_id).latest_result().exc_string
        assert "abandoned" in reason and "died" in reason, reason
        assert job_id not in StartedJobRegistry("batch", connection=rstack.rq()).get_job_ids(cleanup=False)
        asker.join(60)
        [res] = out["r"].json()["results"]
        assert res.get("error") or res.get("pending"), res  # the request got an answer, never a hang
    finally:
        gated.close()


def test_a_finetune_queued_before_a_redis_restart_runs_after_it(rstack, fake_ls):
    add_annotated_project(fake_ls, 73, 7300, 4)
    key = project_key(73, fake_ls.url)
    rstack.stop_worker("train")  # no trainer: the job stays queued
    assert _train(rstack, 73) == "enqueued"
    job_id = rstack.state().get(f"refseg:project:{key}:train:queued")
    assert _job(rstack, job_id).get_status() == JobStatus.QUEUED

    rstack.stop_redis()  # SIGTERM: Redis writes its append-only file and exits
    rstack.start_redis()
    assert rstack.state().get(f"refseg:project:{key}:train:queued") == job_id  # the marker survived (AOF)
    assert _job(rstack, job_id).get_status() == JobStatus.QUEUED  # and the job, still queued

    rstack.start_worker("train", "train")
    rstack.wait_workers(["train"])
    st = _wait_ft_end(rstack, key)
    assert st["job"] == job_id and st["state"] in ("promoted", "rejected"), st


def test_a_finetune_that_makes_the_model_worse_is_rejected(rstack, fake_ls, tiny_checkpoint):
    """The held-out annotations are exactly what the serving model predicts (it scores gIoU 1 on them); the
    annotations trained on are scrambled (the block's mirror image). With tolerance 0 the new version is worse, so
    it is rejected: the serving version does not change and no candidate checkpoint is left behind."""
    import numpy as np
    import torch

    from refseg_model.predictor import RefSegPredictor
    from workers.finetune import held_out_tasks

    torch.set_num_threads(1)  # as the workers: the same arithmetic
    base = RefSegPredictor.from_spec(tiny_checkpoint)
    key = project_key(74, fake_ls.url)
    # tasks whose held-out side is known in advance (a hash of the project key and task id); held-out tasks must
    # have a non-empty prediction to serve as their ground truth
    candidates = list(range(7400, 7440))
    held = held_out_tasks(key, candidates, 0.25)
    predicted = {t: base.predict(scene(t)[0], ["the bright block"])[0].mask for t in candidates}
    held_ok = [t for t in candidates if t in held and predicted[t].any()][:2]
    train = [t for t in candidates if t not in held][:6]
    assert len(held_ok) == 2 and len(train) == 6
    tasks = sorted(held_ok + train)

    def masks(tid, img, block):
        return predicted[tid] if tid in held_ok else np.flip(block, axis=(0, 1)).copy()

    for tid in tasks:
        add_annotated_project(fake_ls, 74, tid, 1, masks=masks)  # one task per call: the ids are not contiguous
    assert held_out_tasks(key, tasks, 0.25) == set(held_ok)  # the same split the fine-tune will make
    setup = {"project": uid(74), "schema": CONFIG_TEXT}
    assert rstack.post("/setup", json=setup).json()["model_version"] == "tiny-test"

    assert _train(rstack, 74) == "enqueued"
    st = _wait_ft_end(rstack, key)
    assert st["state"] == "rejected", st
    assert st["giou_current"] > 0.9 and not st["giou_new"] >= st["giou_current"], st  # (NaN counts as worse)
    assert rstack.post("/setup", json=setup).json()["model_version"] == "tiny-test"  # serving unchanged
    state = rstack.state()
    assert state.hgetall(f"refseg:project:{key}:model") == {} and state.lrange(f"refseg:project:{key}:history",
                                                                               0, -1) == []
    project_dir = rstack.model_dir / key
    left = [p.name for p in project_dir.iterdir()] if project_dir.exists() else []
    assert left == [], f"left behind in {project_dir}: {left}"
