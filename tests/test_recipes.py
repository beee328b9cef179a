"""Training recipes (refseg_model.recipes, `refseg train --recipe`): what `rsrefseg2` sets and prints, that explicit
flags win, the paper's lr schedule, the loss weights set on the loaded model, validation every N epochs; and the
training side of public data read as published (no val split, a mask of another size than its image).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import TRAIN_SETTING_FLAGS, build_parser, main, train_config_kwargs
from formats.datasets.interchange import read_interchange
from formats.datasets.refsegrs import write_refsegrs
from formats.datasets.sample import DatasetFormatError, IncompleteDatasetWarning, Sample
from refseg_model.checkpoint import load_model
from refseg_model.data.sources import FileSource
from refseg_model.data.synth import write_dataset
from refseg_model.recipes import RECIPES, resolve_recipe
from refseg_model.train import TrainConfig, apply_loss_weights, lr_factor, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("synth64")
    write_dataset(d, n_images=8, size=64, expressions_per_image=2, seed=2, progress=False,
                  split_fractions=(0.75, 0.25, 0.0))
    return d


def _kwargs(*argv: str) -> dict:
    return train_config_kwargs(build_parser().parse_args(["train", "--out", "o", *argv]))


# ------------------------------------------------------------------------------------------------ the recipe
def test_rsrefseg2_sets_the_papers_settings_and_prints_them(capsys):
    kw = _kwargs("--data", "rrsis-d:/data/rrsisd", "--recipe", "rsrefseg2")
    table = capsys.readouterr().out
    cfg = TrainConfig(**kw)  # every setting is a TrainConfig field
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.grad_clip, cfg.min_lr_ratio) == \
        (1e-4, 0.05, 300, 8, 3.0, 0.01)
    assert cfg.warmup_frac == pytest.approx(5 / 300) and cfg.cosine_start_frac == 0.1
    assert cfg.cosine_period_frac == pytest.approx(390 / 300)
    assert cfg.augment is False and cfg.eval_every_epochs == 10 and cfg.max_val is None and cfg.steps is None
    assert cfg.loss_weights == {"bce": 5.0, "dice": 5.0, "orthogonality": 0.5, "contrastive": 0.5, "dense": 0.0}
    assert cfg.recipe == "rsrefseg2-rrsisd"
    assert table.startswith("recipe rsrefseg2-rrsisd: RSRefSeg 2") and "for --data rrsis-d:" in table
    for line in ("lr                 = 0.0001", "epochs             = 300", "batch_size         = 8",
                 "augment            = False", "max_val            = all",
                 "loss weights       = bce 5, dice 5, orthogonality 0.5, contrastive 0.5, dense 0",
                 "optimizer          = AdamW"):
        assert line in table, line
    assert "not set by the recipe:" in table and "input size" in table and "UNVERIFIED" in table
    assert table.rstrip().endswith("explicit flags overriding the recipe: none")


def test_the_recipe_variant_follows_the_data_set():
    assert resolve_recipe("rsrefseg2", "refsegrs:/x")[0].name == "rsrefseg2-refsegrs"
    assert resolve_recipe("rsrefseg2", "risbench:/x")[0].name == "rsrefseg2-risbench"
    assert resolve_recipe("rsrefseg2", "rrsisd:/x")[0].name == "rsrefseg2-rrsisd"
    recipe, why = resolve_recipe("rsrefseg2", "/some/interchange")
    assert recipe.name == "rsrefseg2-rrsisd" and "RRSIS-D variant" in why
    assert resolve_recipe("rsrefseg2-refsegrs", "rrsis-d:/x") == (RECIPES["rsrefseg2-refsegrs"], "named")
    refsegrs = RECIPES["rsrefseg2-refsegrs"].settings
    assert (refsegrs["lr"], refsegrs["epochs"]) == (2e-4, 600)
    assert refsegrs["cosine_period_frac"] == pytest.approx(1080 / 600)
    with pytest.raises(ValueError, match="unknown recipe"):
        resolve_recipe("rsrefseg3", "/x")


def test_explicit_flags_win_over_the_recipe_and_are_named(capsys):
    kw = _kwargs("--data", "refsegrs:/d", "--recipe", "rsrefseg2", "--lr", "5e-4", "--steps", "100", "--augment",
                 "--eval-every", "7")
    table = capsys.readouterr().out
    cfg = TrainConfig(**kw)
    assert (cfg.lr, cfg.steps, cfg.augment, cfg.eval_every, cfg.batch_size) == (5e-4, 100, True, 7, 8)
    assert re.search(r"lr +=.*YOUR --lr \(recipe: 0\.0002\)", table)
    assert re.search(r"epochs +=.*\(600\) +unused: YOUR --steps 100 wins", table)
    assert re.search(r"eval_every_epochs += \(10\) +unused: YOUR --eval-every 7 wins", table)
    assert re.search(r"augment +=.*True +YOUR --augment \(recipe: False\)", table)
    assert "explicit flags overriding the recipe: --augment, --eval-every, --lr, --steps" in table


def test_without_a_recipe_the_flags_not_given_keep_trainconfigs_defaults(capsys):
    kw = _kwargs("--data", "d")
    assert TrainConfig(**kw) == TrainConfig(data="d", out="o")
    assert capsys.readouterr().out == ""
    assert TrainConfig(**_kwargs("--data", "d", "--no-augment", "--lr", "1e-3")) == \
        TrainConfig(data="d", out="o", augment=False, lr=1e-3)
    assert TrainConfig(**_kwargs("--data", "d", "--lr", "0", "--decoder-lr", "2e-3", "--select", "last")) == \
        TrainConfig(data="d", out="o", lr=0.0, decoder_lr=2e-3, select="last")
    assert TrainConfig(**_kwargs("--data", "d", "--interactive-frac", "0.5", "--max-corrections", "8")) == \
        TrainConfig(data="d", out="o", interactive_frac=0.5, max_corrections=8)
    # the defaults the help names are TrainConfig's
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help or "" for a in train_parser._actions}
    dest = {"warmup_frac": "warmup", "curriculum_frac": "curriculum"}
    defaults = TrainConfig(data="d", out="o")
    for field, flag in TRAIN_SETTING_FLAGS.items():
        m = re.search(r"default (on|[0-9.]+)", helps[dest.get(field, field)])
        if m:
            shown = True if m.group(1) == "on" else float(m.group(1))
            assert shown == getattr(defaults, field), (flag, shown)


def test_an_unknown_recipe_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--recipe", "nope"])
    assert exc.value.code == 2 and "rsrefseg2" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- the schedule
def _old_lr_factor(step, total, warmup_frac, min_ratio):  # train.py's schedule before the recipe
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return 0.01 + 0.99 * step / warm
    progress = (step - warm) / max(1, total - warm)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@pytest.mark.parametrize("total", [1, 7, 40, 1000])
def test_default_schedule_is_unchanged(total):
    for step in range(total):
        assert lr_factor(step, total, 0.05, 0.01) == _old_lr_factor(step, total, 0.05, 0.01)


def test_rsrefseg2_schedule_warms_up_stays_flat_then_follows_a_long_cosine():
    spe, epochs = 100, 300  # steps per epoch
    total = spe * epochs
    s = RECIPES["rsrefseg2-rrsisd"].settings
    f = [lr_factor(k, total, s["warmup_frac"], s["min_lr_ratio"], s["cosine_start_frac"], s["cosine_period_frac"])
         for k in range(total)]
    warm = int(s["warmup_frac"] * total)
    assert abs(warm - 5 * spe) <= 1  # 5 epochs
    assert f[0] == pytest.approx(0.01) and all(a < b for a, b in zip(f[:warm], f[1:warm]))
    assert all(v == 1.0 for v in f[warm: 30 * spe])  # flat until epoch 30
    assert all(a >= b for a, b in zip(f[30 * spe:], f[30 * spe + 1:]))  # then decreasing
    # mmengine's CosineAnnealingLR(T_max=390 epochs, begin=30, end=300, eta_min=0.01 lr), closed form, at the end
    t = (total - 1 - 30 * spe) / (390 * spe)
    assert f[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
    assert 0.22 < f[-1] < 0.23  # never reaches the floor


# ------------------------------------------------------------------------------------------------ in train()
def test_apply_loss_weights_sets_the_models_loss_config():
    torch.manual_seed(0)
    model, _ = load_model("preset:tiny")
    assert model.cfg.loss.dense == 1.0  # the tiny preset trains from scratch with the dense-prompt BCE
    changed = apply_loss_weights(model, RECIPES["rsrefseg2-rrsisd"].loss_weights)
    assert changed == {"dense": (1.0, 0.0)} and model.cfg.loss.dense == 0.0 and model.cfg.loss.bce == 5.0
    assert apply_loss_weights(model, None) == {}
    with pytest.raises(ValueError, match="unknown loss weight"):
        apply_loss_weights(model, {"focal": 1.0})


def test_recipe_run_through_the_command_line(tmp_path, data_dir, capsys, monkeypatch):
    """A short `refseg train --recipe rsrefseg2` run: the table, the loss weights on the model (recorded in the
    checkpoint), no augmentation, validation every `eval_every_epochs` (shrunk by --epochs for the test)."""
    out = tmp_path / "ckpt"
    argv = ["train", "--data", str(data_dir), "--init", "preset:tiny", "--out", str(out), "--recipe", "rsrefseg2",
            "--epochs", "2", "--batch-size", "4", "--threads", "1"]
    from refseg_model import train as train_module

    seen = []
    real = train_module.FileSource.batch

    def spy(self, n, step, total):
        seen.append(self.augment)
        return real(self, n, step, total)

    monkeypatch.setattr(train_module.FileSource, "batch", spy)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recipe rsrefseg2-rrsisd" in printed and "explicit flags overriding the recipe: --batch-size, --epochs" \
        in printed
    assert "loss weights set on the model's loss config (recipe rsrefseg2-rrsisd): dense 1 -> 0" in printed
    assert "model tiny: input 64 px" in printed
    n_train = len(read_interchange(data_dir, "train"))
    total = 2 * math.ceil(n_train / 4)
    assert f"trained {total} steps" in printed and seen == [False] * total
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["loss"]["dense"] == 0.0
    assert meta["metadata"]["train"]["recipe"] == "rsrefseg2-rrsisd" and meta["metadata"]["train"]["max_val"] is None
    assert meta["metadata"]["val"]["n"] == len(read_interchange(data_dir, "val"))  # the whole val split
    history = json.loads((tmp_path / "ckpt.train" / "history.json").read_text())
    assert [h["step"] for h in history] == [total]  # every 10 epochs: only at the end of a 2-epoch run


def test_eval_every_epochs(tmp_path, data_dir):
    n_train = len(read_interchange(data_dir, "train"))
    spe = math.ceil(n_train / 4)
    result = train(TrainConfig(data=str(data_dir), out=str(tmp_path / "c"), init="preset:tiny", epochs=2,
                               batch_size=4, eval_every_epochs=1, max_val=2, progress=False, threads=1))
    assert [h["step"] for h in result.history] == [spe, 2 * spe]


# ------------------------------------------------------------------------------ public data in training
def test_training_on_a_tree_without_a_val_split_keeps_the_latest(tmp_path, data_dir, capsys):
    tree = write_refsegrs(read_interchange(data_dir), tmp_path / "risbench", layout="risbench")
    (tree / "output_phrase_val.txt").unlink()  # RISBench as RSRefSeg 2 ships it: train and test only
    with pytest.warns(IncompleteDatasetWarning, match="output_phrase_val.txt not found"):
        result = train(TrainConfig(data=f"risbench:{tree}", out=str(tmp_path / "c"), init="preset:tiny", steps=2,
                                   batch_size=2, progress=False, threads=1))
    assert "no val split: no checkpoint selection, the latest checkpoint is kept" in capsys.readouterr().out
    assert result.best == {} and (tmp_path / "c" / "config.json").is_file()


def test_training_source_refuses_a_mask_of_another_size(tmp_path):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "im.png")
    Image.fromarray(np.zeros((16, 8), np.uint8)).save(tmp_path / "m.png")
    sample = Sample(tmp_path / "im.png", tmp_path / "m.png", "the lone tank", "train")
    src = FileSource([sample], 16, augment=False, seed=0, rank=0, world=1)
    with pytest.raises(DatasetFormatError, match=r"'the lone tank' \[train\]: mask .*m\.png is 8x16 but image "
                                                 r".*im\.png is 16x16"):
        src.batch(1, 0, 1)
