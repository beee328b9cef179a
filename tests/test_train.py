"""Training on the `tiny` preset: a short run learns and writes a checkpoint, an interrupted run resumes, and
`torchrun --nproc_per_node 2` (gloo, CPU) trains with DDP through the `refseg train` command.

Data: a small synthetic interchange-layout set (64 px scenes, the tiny model's input size).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from model_support import segmentation_loss

from formats.datasets.layouts import load_samples
from refseg_model.checkpoint import load_checkpoint, load_model
from refseg_model.data.synth import write_dataset
from refseg_model.train import TrainConfig, train

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synth64")
    n = write_dataset(d, n_images=10, size=64, expressions_per_image=2, seed=1, progress=False)
    assert n == 20
    assert len(load_samples(str(d), "train")) >= 8 and load_samples(str(d), "val")
    return d


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _state(out: Path) -> dict:
    return torch.load(out.with_name(out.name + ".train") / "state.pt", map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------- short run
def test_tiny_training_lowers_loss_and_writes_checkpoint(tmp_path, data_dir):
    out = tmp_path / "ckpt"
    cfg = TrainConfig(data=str(data_dir), out=str(out), init="preset:tiny", steps=40, batch_size=4, lr=3e-3,
                      eval_every=20, augment=False, progress=False, threads=1, seed=0, resume=False)
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building the preset: the same initial weights
    initial, _ = load_model("preset:tiny")
    before = segmentation_loss(initial, data_dir)

    result = train(cfg)

    assert result.steps == 40 and result.version == "tiny-trained" and result.out == out
    assert [h["step"] for h in result.history] == [20, 40]
    assert all("val_gIoU" in h and "loss" in h for h in result.history)
    # the final weights (resume state) fit the training data better than the initial ones
    last, _ = load_checkpoint(out.with_name("ckpt.train") / "last")
    after = segmentation_loss(last, data_dir)
    assert after < 0.8 * before, (before, after)

    # the selected checkpoint: a full `tiny` checkpoint with its provenance
    meta = json.loads((out / "config.json").read_text())
    assert (out / "model.safetensors").is_file()
    assert meta["format"] == "refseg-ckpt/1" and meta["version"] == "tiny-trained" and meta["stores"] == "full"
    assert meta["config"]["name"] == "tiny"
    md = meta["metadata"]
    assert md["base"] == "tiny-init" and md["data"] == str(data_dir)
    assert md["step"] == result.best["step"] and md["step"] in (20, 40)
    assert set(md["val"]) >= {"n", "gIoU", "cIoU", "Pr@0.5", "Pr@0.9"} and md["val"]["n"] == len(load_samples(str(data_dir), "val"))
    assert md["train"]["steps"] == 40 and md["train"]["init"] == "preset:tiny"
    model, meta2 = load_checkpoint(out)
    assert meta2["version"] == "tiny-trained"
    # state for resuming: done
    st = _state(out)
    assert (st["step"], st["total"], st["data"]) == (40, 40, str(data_dir))
    assert json.loads((out.with_name("ckpt.train") / "history.json").read_text()) == result.history


def test_progress_hook_reports_every_step_and_every_validation(tmp_path, data_dir):
    """`on_progress` (the fine-tune status page's feed) sees each optimizer step and each validation on rank 0,
    and stays out of the checkpoint's recorded config."""
    calls = []

    def hook(info: dict) -> None:  # a closure, like the worker's: neither JSON- nor safely pickle-able
        calls.append(dict(info))

    out = tmp_path / "ckpt"
    result = train(TrainConfig(data=str(data_dir), out=str(out), init="preset:tiny", steps=6, batch_size=2,
                               eval_every=3, max_val=2, augment=False, progress=False, threads=1, on_progress=hook))

    steps = [c for c in calls if "val" not in c]
    assert [c["step"] for c in steps] == [1, 2, 3, 4, 5, 6] and all(c["steps"] == 6 for c in steps)
    assert all(isinstance(c["loss"], float) and math.isfinite(c["loss"]) and c["loss"] > 0 for c in steps)
    evals = [c for c in calls if "val" in c]
    assert [c["step"] for c in evals] == [3, 6] and all("gIoU" in c["val"] and c["steps"] == 6 for c in evals)
    assert [c["loss"] for c in evals] == [steps[2]["loss"], steps[5]["loss"]]
    assert [h["loss"] for h in result.history] == [round(c["loss"], 5) for c in evals]
    recorded = json.loads((out / "config.json").read_text())["metadata"]["train"]
    assert "on_progress" not in recorded and recorded["steps"] == 6
    assert _state(out)["step"] == 6  # the resume state saved (and loads with weights_only) as before


# ---------------------------------------------------------------------------------------------------- resume
def test_interrupted_training_resumes(tmp_path, data_dir, capsys):
    from cli.main import main

    out = tmp_path / "ckpt"
    state_file = tmp_path / "ckpt.train" / "state.pt"
    argv = ["train", "--data", str(data_dir), "--init", "preset:tiny", "--out", str(out), "--steps", "8",
            "--batch-size", "4", "--eval-every", "2", "--max-val", "2", "--threads", "1", "--no-augment"]
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *argv], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not state_file.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # as abrupt as a lost machine: no cleanup runs
    finally:
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, log
    st = _state(out)
    saved, history_before = st["step"], json.loads(st["history"])
    assert saved % 2 == 0 and 2 <= saved < 8, f"the run was not interrupted midway (state at step {saved})"
    assert [h["step"] for h in history_before] == list(range(2, saved + 1, 2))

    capsys.readouterr()
    code = main(argv)  # the same command again
    assert code == 0
    assert f"resuming from step {saved}/8" in capsys.readouterr().out
    st = _state(out)
    assert (st["step"], st["total"]) == (8, 8)
    # the optimizer state was restored too: AdamW counted all 8 steps, not only the 8 - saved after the restart
    assert {int(v["step"]) for v in st["optimizer"]["state"].values()} == {8}
    history = json.loads((tmp_path / "ckpt.train" / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6, 8]  # continued, nothing repeated
    assert history[: len(history_before)] == history_before
    assert json.loads((out / "config.json").read_text())["metadata"]["step"] in (2, 4, 6, 8)


@pytest.mark.parametrize("interactive_frac,zoom_frac", [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0)],
                         ids=["text", "interactive", "zoom"])
def test_resumed_training_sees_the_batches_of_an_uninterrupted_run(tmp_path, data_dir, monkeypatch, capsys,
                                                                   interactive_frac, zoom_frac):
    """Resume restores the data order and the flip generator too: stopping after step 5 and resuming ends with
    exactly the weights of a run that never stopped (2 epochs of shuffled, flipped batches); with simulated
    clicks as well (their prompts and first clicks are drawn from generators seeded by the run and the step),
    and with zoomed crops (drawn from the source's generator)."""
    from refseg_model import train as train_module

    common = dict(data=str(data_dir), init="preset:tiny", steps=8, batch_size=4, eval_every=2, max_val=2,
                  augment=True, progress=False, threads=1, interactive_frac=interactive_frac, zoom_frac=zoom_frac)
    if zoom_frac:  # this data set's small targets do come as crops without their expression
        src = train_module.FileSource(load_samples(str(data_dir), "train"), 64, True, 0, 0, 1, zoom_frac)
        items = src.batch(16, 0, 8)
        zoomed = [img.shape[0] for img, _, expr, crop in items if crop]
        assert all(not expr for _, _, expr, crop in items if crop)
        assert zoomed and all(side < 64 for side in zoomed) and len(zoomed) < len(items)
    train(TrainConfig(out=str(tmp_path / "straight"), **common))

    real_batch = train_module.FileSource.batch

    def interrupted(self, n, step, total):
        if step == 5:
            raise KeyboardInterrupt  # Ctrl-C during step 6: the state of step 4 is on disk
        return real_batch(self, n, step, total)

    monkeypatch.setattr(train_module.FileSource, "batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "resumed"), **common))
    monkeypatch.setattr(train_module.FileSource, "batch", real_batch)
    assert _state(tmp_path / "resumed")["step"] == 4
    capsys.readouterr()
    train(TrainConfig(out=str(tmp_path / "resumed"), **common))
    out = capsys.readouterr().out
    assert "resuming from step 4/8" in out and "not restored" not in out

    straight, _ = load_checkpoint(tmp_path / "straight.train" / "last")
    resumed, _ = load_checkpoint(tmp_path / "resumed.train" / "last")
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    # a checkpoint trained with zoomed crops says so (zoom-in clicks on by default), and so do its fine-tunes
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["metadata"]["zoom_in"] is bool(zoom_frac)
    if zoom_frac:
        train(TrainConfig(out=str(tmp_path / "ft"), **{**common, "init": str(tmp_path / "straight"), "steps": 1,
                                                        "zoom_frac": 0.0}))
        assert json.loads((tmp_path / "ft" / "config.json").read_text())["metadata"]["zoom_in"] is True


def test_decoder_lr_with_lr_0_trains_the_click_pathway_alone_and_select_last_keeps_the_last(tmp_path, data_dir,
                                                                                             monkeypatch):
    """`--lr 0 --decoder-lr X`: only SAM's prompt encoder and mask decoder change; `--select last` writes the
    last validated checkpoint even when an earlier one validated better."""
    from refseg_model import train as train_module

    scores = iter([0.9, 0.1])
    monkeypatch.setattr(train_module, "quick_eval", lambda *a, **k: {"n": 2, "gIoU": next(scores), "cIoU": 0.5})
    out = tmp_path / "ckpt"
    cfg = TrainConfig(data=str(data_dir), out=str(out), init="preset:tiny", steps=4, batch_size=4, lr=0.0,
                      decoder_lr=1e-3, eval_every=2, max_val=2, augment=False, progress=False, threads=1, seed=0,
                      interactive_frac=0.5, select="last", resume=False)
    torch.manual_seed(cfg.seed)  # the same initial weights as train() builds
    initial, _ = load_model("preset:tiny")
    result = train(cfg)
    trained, _ = load_checkpoint(out)
    a, b = initial.state_dict(), trained.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    others = [k for k in changed if not k.startswith(("sam.prompt_encoder.", "sam.mask_decoder."))]
    assert changed and not others, others
    assert any(k.startswith("sam.prompt_encoder.") for k in changed)  # the click embeddings learned
    assert json.loads((out / "config.json").read_text())["metadata"]["step"] == 4  # not step 2, the best
    assert result.best["step"] == 4


def test_resume_prints_the_step_it_continues_from(tmp_path, data_dir, capsys):
    """The resume message, and that a different run's state is not picked up."""
    out = tmp_path / "ckpt"
    common = dict(data=str(data_dir), out=str(out), init="preset:tiny", batch_size=2, eval_every=2, max_val=2,
                  augment=False, progress=False, threads=1)
    train(TrainConfig(steps=2, **common))
    assert _state(out)["step"] == 2
    capsys.readouterr()
    # same data and total: nothing left to do, but the state is recognised
    result = train(TrainConfig(steps=2, **common))
    assert "resuming from step 2/2" in capsys.readouterr().out and result.history[-1]["step"] == 2
    # another total: another run, started from scratch
    result = train(TrainConfig(steps=4, **common))
    assert "ignoring resume state" in capsys.readouterr().out
    assert [h["step"] for h in result.history] == [2, 4]
    # --restart (resume=False) ignores matching state silently
    result = train(TrainConfig(steps=4, resume=False, **common))
    assert "resuming" not in capsys.readouterr().out and [h["step"] for h in result.history] == [2, 4]


# -------------------------------------------------------------------------------------------------- torchrun
# Instrumentation around the unchanged `refseg` command: each rank records a digest of every batch it trains on
# and of the weights after every optimizer step, then writes them to RANKS_DIR/rank<R>.json at exit.
WRAPPER = r'''
import atexit, json, os, runpy, sys
import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_post_hook
import refseg_model.train as T

rank, log = int(os.environ["RANK"]), {"batches": [], "weights": [], "world": None}
_collate = T.collate

def collate(items, size, device):
    log["batches"].append([it[2] for it in items])  # (image, mask, expression, ...)
    return _collate(items, size, device)

T.collate = collate

def after_step(opt, args, kwargs):
    params = [p for g in opt.param_groups for p in g["params"]]
    log["weights"].append([float(sum(p.detach().double().sum() for p in params)),
                           float(sum(p.detach().double().abs().sum() for p in params))])
    log["world"] = dist.get_world_size() if dist.is_initialized() else 1

register_optimizer_step_post_hook(after_step)

@atexit.register
def dump():
    with open(os.path.join(os.environ["RANKS_DIR"], f"rank{rank}.json"), "w") as fh:
        json.dump(log, fh)

sys.argv = ["refseg", *sys.argv[1:]]
runpy.run_module("cli.main", run_name="__main__", alter_sys=True)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tmp_path, data_dir):
    wrapper = tmp_path / "refseg_instrumented.py"
    wrapper.write_text(WRAPPER)
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    out = tmp_path / "ddp-ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(wrapper),
           "train", "--data", str(data_dir), "--init", "preset:tiny", "--out", str(out), "--steps", "3",
           "--batch-size", "2", "--eval-every", "3", "--threads", "1", "--lr", "1e-3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**_env(), "RANKS_DIR": str(ranks)}, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trained 3 steps" in proc.stdout and proc.stdout.count("trained 3 steps") == 1  # rank 0 reports

    logs = [json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1)]
    for log in logs:
        assert log["world"] == 2  # both processes joined one process group
        assert len(log["batches"]) == 3 and len(log["weights"]) == 3  # ... and each ran every step
    # each rank trained on its own shard of the data ...
    assert logs[0]["batches"] != logs[1]["batches"]
    # ... yet the weights stay identical after every step: gradients were all-reduced (DDP), and they moved
    for (a, b) in zip(logs[0]["weights"], logs[1]["weights"]):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9)
    assert logs[0]["weights"][0] != logs[0]["weights"][-1]

    meta = json.loads((out / "config.json").read_text())
    assert meta["version"] == "tiny-trained" and meta["metadata"]["step"] == 3
    assert _state(out)["step"] == 3
    model, _ = load_checkpoint(out)
    assert model.cfg.name == "tiny"


def test_a_text_only_finetune_of_a_click_trained_checkpoint_says_how_to_keep_the_clicks(tmp_path, data_dir, capsys):
    """Fine-tuning a checkpoint trained with simulated clicks on text alone wears off its click skill (README):
    the run says so, and a run that trains clicks too stays quiet."""
    common = dict(data=str(data_dir), batch_size=2, steps=1, eval_every=1, max_val=2, augment=False, progress=False,
                  threads=1, resume=False)
    train(TrainConfig(out=str(tmp_path / "clicks"), init="preset:tiny", interactive_frac=0.5, **common))
    assert "note:" not in capsys.readouterr().out  # preset:tiny has no training record
    train(TrainConfig(out=str(tmp_path / "text"), init=str(tmp_path / "clicks"), **common))
    out = capsys.readouterr().out
    assert "was trained with simulated clicks (interactive_frac 0.5)" in out and "--interactive-frac 0.5" in out
    train(TrainConfig(out=str(tmp_path / "both"), init=str(tmp_path / "clicks"), interactive_frac=0.25, **common))
    assert "note:" not in capsys.readouterr().out


def test_samples_without_an_expression_train_the_click_path(tmp_path, data_dir, capsys):
    """Clicks-only annotations (expression "") train even with --interactive-frac 0: from clicks or a box, never
    as text; validation scores text answers only, so a val split without expressions selects nothing."""
    import shutil

    d = tmp_path / "clicks-only"
    shutil.copytree(data_dir, d)
    lines = (d / "annotations.jsonl").read_text().splitlines()
    recs = [json.loads(ln) for ln in lines if ln.strip()]
    for i, r in enumerate(recs):
        if r["split"] != "train" or i % 2:
            r["expression"] = ""
    (d / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "ckpt"
    result = train(TrainConfig(data=str(d), out=str(out), init="preset:tiny", steps=3, batch_size=4, eval_every=3,
                               max_val=4, augment=False, progress=False, threads=1, resume=False))
    assert "no val sample has an expression: no checkpoint selection" in capsys.readouterr().out
    assert result.steps == 3 and (out / "model.safetensors").is_file()
    assert all(math.isfinite(v) for h in result.history for k, v in h.items() if k in ("loss", "passes")), \
        result.history
    assert "passes" in result.history[-1]  # rows were decoded interactively although interactive_frac is 0


def test_zoom_frac_outside_0_1_is_refused_before_any_work(tmp_path, data_dir):
    with pytest.raises(ValueError, match=r"zoom_frac must be in \[0, 1\]"):
        train(TrainConfig(data=str(data_dir), out=str(tmp_path / "z"), init="preset:tiny", steps=1, zoom_frac=1.5,
                          progress=False, threads=1))
    assert not (tmp_path / "z").exists()
