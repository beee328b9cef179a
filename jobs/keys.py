"""Every Redis key the service uses, in one place (all start with `refseg:`).

<project> is a project's key, `<id>-<created>-<instance>` (labelstudio.identity.ProjectRef.key): the Label Studio
project id, its creation stamp, and which Label Studio (a hash of LABEL_STUDIO_URL). A project re-created with
the same id, or one of another Label Studio, has another key and inherits nothing.

    refseg:handoff:<job>                   a batch job's results, or "late" (see jobs.handoff)
    refseg:done:<request>                  list of job ids whose results wait for that /predict request
    refseg:pending:<project>:<task>        a task in flight or handed over for late delivery: "claim:<request>" while
                                           a /predict enqueues it, its job id, then "posted:<version>" (backend.predict)
    refseg:typed:<project>:<task>          the expression last typed for the task (jobs.typed_expressions)
    refseg:worker:<name>:alive             a worker's liveness key (see jobs.liveness)
    refseg:worker:<name>:missing_since     when a backend process first saw that key missing (server clock)
    refseg:recovered:<job>                 a job left started by a dead worker was failed by jobs.recovery
    refseg:project:<project>:new_annotations   annotations since the last fine-tune trigger (jobs.finetune_state)
    refseg:project:<project>:train:queued      the project's queued fine-tune job
    refseg:project:<project>:train:running     the project's running fine-tune job
    refseg:project:<project>:train:rerun       a trigger arrived while a job was running
    refseg:project:<project>:train:recheck     a re-check of an undecided running job is queued
    refseg:project:<project>:ft_counter        fine-tune runs so far (names the next version)
    refseg:project:<project>:model             the serving version (jobs.versions)
    refseg:project:<project>:history           promoted versions, newest first
    refseg:projects                        projects that have a lineage
    refseg:ls:<instance>:url               the LABEL_STUDIO_URL an instance hash stands for (for messages)
    refseg:ls:<instance>:created:<id>      creation stamp of project <id> as last seen in /setup or /predict
    refseg:stats:jobs:<kind>               job latency histogram (jobs.stats)
    refseg:stats:counters                  named counters
    refseg:stats:finetune:<project>        the last fine-tune's numbers, and the running one's progress
    refseg:stats:finetune_runs:<project>   the project's last fine-tune outcomes, newest first (bounded list)
"""
from __future__ import annotations

PREFIX = "refseg:"
PROJECTS = "refseg:projects"
STATS_JOBS_PREFIX = "refseg:stats:jobs:"
STATS_COUNTERS = "refseg:stats:counters"
STATS_FINETUNE_PREFIX = "refseg:stats:finetune:"
STATS_FINETUNE_RUNS_PREFIX = "refseg:stats:finetune_runs:"


def handoff(job_id: str) -> str:
    return f"refseg:handoff:{job_id}"


def done(request_id: str) -> str:
    return f"refseg:done:{request_id}"


def pending(project: str, task_id) -> str:
    return f"refseg:pending:{project}:{task_id}"


def typed_expression(project: str, task_id) -> str:
    return f"refseg:typed:{project}:{task_id}"


def finetune_runs(project_id: str) -> str:
    return f"{STATS_FINETUNE_RUNS_PREFIX}{project_id}"


def worker_alive(name: str) -> str:
    return f"refseg:worker:{name}:alive"


def worker_missing(name: str) -> str:
    return f"refseg:worker:{name}:missing_since"


def project(project_key: str, what: str) -> str:
    """`refseg:project:<project key>:<what>`: new_annotations, train:queued, train:running, train:rerun,
    train:recheck, ft_counter, model, history."""
    return f"refseg:project:{project_key}:{what}"


def recovered(job_id: str) -> str:
    return f"refseg:recovered:{job_id}"


def instance_url(instance: str) -> str:
    return f"refseg:ls:{instance}:url"


def project_created(instance: str, project_id: str) -> str:
    return f"refseg:ls:{instance}:created:{project_id}"
