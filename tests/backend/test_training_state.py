"""backend/finetune_state.py state machine against the real redis-server: one job per project, no trigger lost."""
from __future__ import annotations

import redis

from jobs import finetune_state


def test_finetune_requests_are_deduplicated_and_never_dropped(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    project, enqueued = "900", []
    alive = set()

    def enqueue(job_id):
        enqueued.append(job_id)
        alive.add(job_id)

    req = lambda: finetune_state.request_finetune(state, project, enqueue, lambda j: j in alive)  # noqa: E731
    assert req() == finetune_state.ENQUEUE and len(enqueued) == 1
    assert req() == finetune_state.ALREADY_QUEUED and len(enqueued) == 1  # absorbed by the queued job

    first = enqueued[0]
    assert finetune_state.start_finetune(state, project, first, 60)
    assert req() == finetune_state.RERUN_REQUESTED and len(enqueued) == 1
    assert req() == finetune_state.RERUN_REQUESTED
    successor = finetune_state.finish_finetune(state, project, first)
    assert successor is not None  # the trigger that arrived during the run
    enqueue(successor)
    assert finetune_state.start_finetune(state, project, successor, 60)
    assert finetune_state.finish_finetune(state, project, successor) is None
    assert finetune_state.status(state, project) == {"queued": None, "running": None, "rerun_requested": False,
                                               "new_annotations": 0}

    # a marker left by a job RQ lost (crash between marker and enqueue, flushed queue) does not block forever
    assert req() == finetune_state.ENQUEUE
    alive.clear()
    assert req() == finetune_state.ENQUEUE and len(enqueued) == 4


def test_annotation_counter(redis_url):
    state = redis.Redis.from_url(redis_url, decode_responses=True)
    assert [finetune_state.count_annotation(state, "901", 3) for _ in range(7)] == [False, False, True] * 2 + [False]
    assert not any(finetune_state.count_annotation(state, "902", 0) for _ in range(5))  # 0 = only START_TRAINING


def test_a_late_post_under_an_older_version_does_not_hold_the_task(redis_url):
    """After a promotion, a task whose late prediction was posted under the old version must be predicted again
    (otherwise "Retrieve predictions" would answer a placeholder and nothing would deliver the new version)."""
    from backend.predict import PredictService
    from jobs.handoff import pending_key, posted_marker
    from labelstudio.identity import ProjectRef

    state = redis.Redis.from_url(redis_url, decode_responses=True)
    service = PredictService(settings=None, rq_conn=state, state=state, versions=None, metrics=None)
    project = ProjectRef("77", "1712345678", "0123456789")
    state.set(pending_key(project.key, 1), posted_marker("v1"), ex=60)
    state.set(pending_key(project.key, 2), posted_marker("v2"), ex=60)
    tasks = [{"id": 1}, {"id": 2}, {"id": 3}]
    assert service._pending_jobs(project, tasks, "v2") == {2}
    assert service._pending_jobs(project, tasks, "v1") == {1}


def test_held_out_tasks_keep_their_side_as_the_project_grows():
    from workers.finetune import held_out_tasks

    first = list(range(1, 41))
    grown = first + list(range(1000, 1400))  # the project gets 400 more annotations
    test_first, test_grown = held_out_tasks("5", first, 0.2), held_out_tasks("5", grown, 0.2)
    # a task trained on in round 1 is never scored in round 2, and a held-out one never trained on
    assert test_grown & set(first) == test_first
    assert 0.12 < len(test_grown) / len(grown) < 0.28  # about the configured fraction
    assert held_out_tasks("6", grown, 0.2) != test_grown  # projects get their own split
    # tiny projects: at least one task on each side, whatever the hash says
    for tasks in ([1, 2], [7, 9, 11]):
        for fraction in (0.0, 0.2, 0.9, 1.0):
            test = held_out_tasks("5", tasks, fraction)
            assert 1 <= len(test) < len(tasks), (tasks, fraction, test)
    assert held_out_tasks("5", [3], 0.2) == set()


def test_paired_comparison_of_held_out_ious():
    from workers.finetune import paired_comparison

    c = paired_comparison([0.9, 0.5, 0.7, 0.7], [0.8, 0.6, 0.4, 0.7])
    assert c["held_out_better"] == 2 and c["held_out_worse"] == 1
    assert abs(c["giou_delta"] - 0.075) < 1e-9
    # differences 0.1, -0.1, 0.3, 0: sample std 0.170783 / sqrt(4)
    assert abs(c["giou_delta_se"] - 0.0853913) < 1e-6
    assert paired_comparison([0.4], [0.6]) == {"giou_delta": -0.2, "giou_delta_se": None, "held_out_better": 0,
                                                "held_out_worse": 1}
