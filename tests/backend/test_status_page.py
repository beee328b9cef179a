"""The status page (/status, /status.json) against the real stack, and in a real headless Chromium.

Its own stack on Redis database 1 of the session's redis-server (so that its workers and queues are its own):
gunicorn with basic auth, an inference worker and a trainer. The trainer runs with FINETUNE_PROMOTE_TOLERANCE=1
(every candidate is promoted) or -1 (every candidate is rejected: gIoU lies in [0, 1]) and is swapped between
the two, so that one project gets a promoted, a rejected and a promoted fine-tune, each a real run. A project
Label Studio does not know gives a failed fine-tune.

The browser is Debian's `chromium` (scripts/bootstrap.sh installs it) driven by playwright, with every request
that does not go to 127.0.0.1 aborted. With REFSEG_STATUS_SCREENSHOT=docs/status_page.png the page after the
promotions is saved there.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from backend_support import (
    add_annotated_project,
    free_port,
    project_key,
    project_obj,
    stop_processes,
    wait_for,
    wait_for_health,
)
from browser_support import keep_screenshot, localhost_page

from jobs import stats

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
AUTH = ("lead", "st4tus:page")
PROJECT = 41  # promoted, rejected, promoted
FAILING = 49  # not in the fake Label Studio: its fine-tune fails


def _db(url: str, n: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{n}"


class StatusStack:
    def __init__(self, env: dict, tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.trainer = None
        self.procs = []
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        fh = open(tmp / "gunicorn.log", "w")
        proc = subprocess.Popen([PY, "-m", "gunicorn", "--workers", "1", "--threads", "4", "--timeout", "120",
                                 "-b", f"127.0.0.1:{port}", "_wsgi:app"], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
        self.procs.append((proc, fh))
        self.procs.append(self._worker("interactive,batch", {}, "worker-infer.log"))

        wait_for_health(self.url, proc, tmp / "gunicorn.log", "gunicorn")

    def _worker(self, queues: str, extra: dict, log: str):
        fh = open(self.tmp / log, "a")
        proc = subprocess.Popen([PY, "-m", "workers.worker", "--queues", queues, "--threads", "1", "--no-preload"],
                                cwd=ROOT, env={**self.env, **extra}, stdout=fh, stderr=subprocess.STDOUT)
        return proc, fh

    def start_trainer(self, tolerance: float) -> None:
        """A trainer on the train queue with FINETUNE_PROMOTE_TOLERANCE=`tolerance` (replaces the previous one)."""
        self.stop_trainer()
        self.trainer = self._worker("train", {"FINETUNE_PROMOTE_TOLERANCE": str(tolerance)}, "worker-train.log")
        wait_for(lambda: any(w["queues"] == ["train"] and w["alive"] for w in self.status()["workers"]), 120,
                 "the trainer to register", 0.3)

    def stop_trainer(self) -> None:
        if self.trainer is not None:
            stop_processes([self.trainer], 30)
            self.trainer = None

    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("auth", AUTH)
        return requests.get(self.url + path, timeout=10, **kw)

    def status(self) -> dict:
        r = self.get("/status.json")
        assert r.status_code == 200, r.text
        return r.json()

    def key(self, pid) -> str:
        """The key of project `pid`'s state (Redis, MODEL_DIR) in this deployment."""
        return project_key(pid, self.env["LABEL_STUDIO_URL"])

    def project(self, pid) -> dict:
        return next(p for p in self.status()["projects"] if p["id"] == str(pid))

    def start_training(self, pid) -> str:
        r = requests.post(self.url + "/webhook", json={"action": "START_TRAINING", "project": project_obj(pid)},
                          auth=AUTH, timeout=5)
        assert r.status_code == 201, r.text
        return r.json()["finetune"]

    def wait_outcomes(self, pid, n: int) -> list:
        def done():
            p = next((p for p in self.status()["projects"] if p["id"] == str(pid)), None)
            return p["outcomes"] if p and len(p["outcomes"]) >= n and not p["finetune"]["running"] else None

        return wait_for(done, 240, f"fine-tune #{n} of project {pid} to finish", 0.3)

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(self.tmp.glob("*.log")))

    def close(self) -> None:
        self.stop_trainer()
        stop_processes(self.procs, 20)


@pytest.fixture(scope="module")
def status_stack(base_env, redis_url, tmp_root):
    tmp = tmp_root / "status-page"
    tmp.mkdir()
    env = {**base_env, "REDIS_URL": _db(redis_url, 1), "MODEL_DIR": str(tmp / "models"),
           "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1], "TRAIN_EVERY_N_ANNOTATIONS": "0"}
    redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    stack = StatusStack(env, tmp)
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def finetuned(status_stack, fake_ls):
    """Project 41: fine-tune 1 promoted (its trainer seen busy on it meanwhile), 2 rejected, 3 promoted; project
    49: a failed fine-tune. Returns what was seen while the first one ran."""
    s = status_stack
    add_annotated_project(fake_ls, PROJECT, 4100, 6)
    try:
        s.start_trainer(1.0)
        fake_ls.project_delay_s[PROJECT] = 3.0  # the job's first call to Label Studio: the run lasts >= 3 s
        assert s.start_training(PROJECT) == "enqueued"

        def busy():
            snap = s.status()
            trainer = [w for w in snap["workers"] if w["queues"] == ["train"]]
            p = next((p for p in snap["projects"] if p["id"] == str(PROJECT)), None)
            if trainer and trainer[0]["current_job"] and p and p["finetune"]["running"]:
                return snap, s.get("/status").text
            return None

        seen, seen_html = wait_for(busy, 120, "the trainer to be seen running the fine-tune", 0.2)
        fake_ls.project_delay_s[PROJECT] = 0.0
        s.wait_outcomes(PROJECT, 1)

        s.start_trainer(-1.0)  # the next candidate is rejected
        assert s.start_training(PROJECT) == "enqueued"
        s.wait_outcomes(PROJECT, 2)
        assert s.start_training(FAILING) == "enqueued"
        s.wait_outcomes(FAILING, 1)

        s.start_trainer(1.0)
        assert s.start_training(PROJECT) == "enqueued"
        s.wait_outcomes(PROJECT, 3)
    except AssertionError:
        print(s.logs())
        raise
    return {"busy": seen, "busy_html": seen_html}


# ------------------------------------------------------------------------------------------------ HTTP, JSON
def test_status_needs_basic_auth(status_stack):
    s = status_stack
    for path in ("/status", "/status.json"):
        assert s.get(path, auth=None).status_code == 401
        assert s.get(path, auth=(AUTH[0], AUTH[1][:-1])).status_code == 401
        assert s.get(path, auth=("", "")).status_code == 401
        ok = s.get(path)
        assert ok.status_code == 200
    assert s.get("/status").headers["Content-Type"].startswith("text/html")
    assert requests.get(s.url + "/health", timeout=5).json()["status_page"] == "/status"  # probes stay open


def test_status_shows_workers_queues_and_the_running_fine_tune(status_stack, finetuned):
    snap = finetuned["busy"]
    trainer = next(w for w in snap["workers"] if w["queues"] == ["train"])
    assert trainer["alive"] and trainer["state"] == "busy"
    assert trainer["current_job"]["description"] == f"fine-tune project {PROJECT}"
    assert trainer["current_job"]["queue"] == "train"
    infer = next(w for w in snap["workers"] if w["queues"] == ["interactive", "batch"])
    assert infer["alive"] and infer["state"] == "idle" and infer["current_job"] is None
    assert [q["name"] for q in snap["queues"]] == ["interactive", "batch", "train"]
    assert next(q for q in snap["queues"] if q["name"] == "train")["started"] == 1
    running = next(p for p in snap["projects"] if p["id"] == str(PROJECT))["finetune"]["running"]
    assert running["worker"] == trainer["name"] and running["worker_alive"] is True
    assert running["steps"] == 2 and running["step"] == 0  # FINETUNE_STEPS=2; still reading Label Studio
    html = finetuned["busy_html"]
    assert f"fine-tune project {PROJECT}" in html and 'data-role="progress"' in html and "step 0 / 2" in html


def test_status_json_after_promoted_rejected_and_failed_fine_tunes(status_stack, finetuned):
    p = status_stack.project(PROJECT)
    ft1, ft2, ft3 = (f"tiny-test-p{PROJECT}-ft{n}" for n in (1, 2, 3))
    assert p["serving"]["version"] == ft3 and not p["serving"]["base"]
    # the lineage holds promoted versions only: the rejected ft2 never served
    assert [v["version"] for v in p["lineage"]] == ["tiny-test", ft1, ft3]
    assert [v["parent"] for v in p["lineage"]] == [None, "tiny-test", ft1]
    assert [v["serving"] for v in p["lineage"]] == [False, False, True]
    assert [(o["version"], o["status"]) for o in p["outcomes"]] == [(ft3, "promoted"), (ft2, "rejected"),
                                                                    (ft1, "promoted")]
    for o in p["outcomes"]:
        assert isinstance(o["giou_new"], float) and isinstance(o["giou_current"], float) and o["finished_at"]
        # and the click figure of both versions (IoU after one simulated corrective click), rejected ones too
        assert 0.0 <= o["click_iou_new"] <= 1.0 and 0.0 <= o["click_iou_current"] <= 1.0, o
    rejected = p["outcomes"][1]
    assert rejected["parent"] == ft1 and rejected["reason"].startswith(f"worse than {ft1}, tolerance -1:")
    assert not (Path(status_stack.env["MODEL_DIR"]) / status_stack.key(PROJECT) / ft2).exists()
    # progress went through TrainConfig.on_progress into the fine-tune status; the last step is always written
    last = p["finetune"]["last_run"]
    assert last["state"] == "promoted" and last["step"] == last["steps"] == 2 and isinstance(last["loss"], float)
    assert p["finetune"]["running"] is None

    failing = status_stack.project(FAILING)
    assert failing["serving"]["version"] == "tiny-test" and failing["outcomes"][0]["status"] == "failed"
    snap = status_stack.status()
    [failure] = [f for f in snap["failures"] if f["project"] == str(FAILING)]  # RQ's record and ours, merged
    assert failure["queue"] == "train" and failure["source"] == "fine-tune"
    assert "LabelStudioError" in failure["reason"] and "HTTP 404" in failure["reason"]
    assert next(q for q in snap["queues"] if q["name"] == "train")["failed"] >= 1


def test_status_html_marks_promoted_and_rejected_candidates(status_stack, finetuned):
    html = status_stack.get("/status").text
    ft = [f"tiny-test-p{PROJECT}-ft{n}" for n in (1, 2, 3)]
    assert f'<span class="serving" data-role="serving-version">{ft[2]}</span>' in html
    assert f'<svg class="giou-plot" data-project="{status_stack.key(PROJECT)}"' in html
    assert f'class="run promoted" data-version="{ft[0]}"' in html
    assert f'class="run rejected" data-version="{ft[1]}"' in html
    assert f'class="run promoted" data-version="{ft[2]}"' in html
    assert "HTTP 404" in html  # the failure's reason
    promoted = status_stack.project(PROJECT)["outcomes"][0]
    click = re.search(r'data-role="click-iou"[^>]*>1 click ([0-9.]+) / ([0-9.]+)</div>', html)
    assert click and click.groups() == (f'{promoted["click_iou_new"]:.3f}', f'{promoted["click_iou_current"]:.3f}')
    assert html.count('data-role="click-iou"') == 3  # the three scored runs; the failed one has no figure
    assert "<script" not in html.lower()


# ------------------------------------------------------------------------------------------- jobs.stats, worker
def test_finetune_outcomes_are_a_bounded_list_newest_first(redis_url):
    state = redis.Redis.from_url(_db(redis_url, 2), decode_responses=True)
    state.delete(stats.keys.finetune_runs("p-bounded"))
    for n in range(stats.FINETUNE_RUNS_KEPT + 10):
        stats.record_finetune_outcome(state, "p-bounded", status="rejected", version=f"v{n}", giou_new=0.1,
                                      giou_current=0.2, reason="worse", finished_at=1000.0 + n)
    got = stats.finetune_outcomes(state, "p-bounded")
    assert len(got) == stats.FINETUNE_RUNS_KEPT
    assert got[0]["version"] == f"v{stats.FINETUNE_RUNS_KEPT + 9}" and got[-1]["version"] == "v10"
    assert set(got[0]) >= {"version", "status", "giou_new", "giou_current", "reason", "finished_at"}
    assert "p-bounded" in stats.finetune_projects(state)
    with pytest.raises(ValueError):
        stats.record_finetune_outcome(state, "p-bounded", status="deferred")


def test_progress_reporter_writes_at_most_once_a_second_and_always_the_last_step(redis_url):
    from workers.finetune import ProgressReporter

    state = redis.Redis.from_url(_db(redis_url, 2), decode_responses=True)
    state.delete(stats.keys.STATS_FINETUNE_PREFIX + "p-progress")
    now = [100.0]
    report = ProgressReporter(state, "p-progress", every_s=1.0, clock=lambda: now[0])
    written = []
    for step in range(1, 11):
        report({"step": step, "steps": 10, "loss": 1.0 / step})
        written.append(stats.finetune_status(state)["p-progress"]["step"])
        now[0] += 0.3
    assert written == [1, 1, 1, 1, 5, 5, 5, 5, 9, 10]
    assert stats.finetune_status(state)["p-progress"]["loss"] == 0.1
    # Redis gone: training goes on (the reporter logs and returns)
    ProgressReporter(redis.Redis(port=free_port(), socket_connect_timeout=0.5), "p")({"step": 1, "steps": 2,
                                                                                       "loss": 0.5})


# ---------------------------------------------------------------------------------------------------- browser
def test_status_page_in_headless_chromium(status_stack, finetuned, tmp_path):
    s = status_stack
    with localhost_page({"width": 1280, "height": 900}, console_types=("error", "warning"),
                        http_credentials={"username": AUTH[0], "password": AUTH[1]}) as (page, log):
        response = page.goto(s.url + "/status", wait_until="load")
        assert response is not None and response.status == 200
        page.wait_for_load_state("networkidle")

        section = page.locator(f"#project-{status_stack.key(PROJECT)}")
        assert section.locator('[data-role="serving-version"]').inner_text() == f"tiny-test-p{PROJECT}-ft3"
        plot = section.locator("svg.giou-plot")
        assert plot.is_visible()
        box = plot.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
        assert plot.locator("g.run.promoted").count() == 2
        rejected = plot.locator("g.run.rejected")
        assert rejected.count() == 1 and rejected.get_attribute("data-version") == f"tiny-test-p{PROJECT}-ft2"
        assert rejected.locator("path").first.is_visible()
        assert page.locator("#workers tr").count() == 3  # header + inference worker + trainer
        assert "HTTP 404" in page.locator("#failures").inner_text()
        assert page.title() == "refseg-assist · status"
        keep_screenshot(page, tmp_path, "status_page.png", "REFSEG_STATUS_SCREENSHOT", 10_000, full_page=True)
    assert log.outside == [], f"the page requested something outside the backend: {log.outside}"
    assert log.failed == [] and log.bad_status == [], (log.failed, log.bad_status)
    assert log.console == [] and log.page_errors == [], (log.console, log.page_errors)
