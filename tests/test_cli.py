"""The `refseg` command line end to end: synth -> eval (figures checked against an independent computation) and
predict (mask at the image's size, overlay), and the clear errors (exit code 2, one-line message) for bad input.

The model is a `tiny` checkpoint with random weights whose mask head is scaled up so that its masks are
non-trivial (partly overlapping the targets); the figures need not be good, only computed right.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main
from refseg_model.checkpoint import load_checkpoint, load_model, save_checkpoint
from refseg_model.predictor import RefSegPredictor

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def refseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the command line in a fresh process (`python -m cli.main`, what the console script calls)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def _captured():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model, _ = load_model("preset:tiny")
    last = model.sam.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():  # random weights give logits in (-1, 1): sharpen them into definite masks
        last.weight.mul_(20)
        last.bias.mul_(20)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny-cli", "cli-test-1")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    d = root / "data"
    with pytest.MonkeyPatch.context() as mp, _captured() as out:
        mp.chdir(root)
        assert main(["synth", "data", "--images", "8", "--size", "64", "--seed", "3", "--splits", "0.25,0.25,0.5"]) == 0
    records = [json.loads(line) for line in (d / "annotations.jsonl").read_text().splitlines()]
    assert f"wrote {len(records)} samples (8 images" in out.getvalue()
    assert {r["split"] for r in records} == {"train", "val", "test"}
    for r in records:
        assert Image.open(d / r["image"]).size == (64, 64)
        assert Image.open(d / r["mask"]).mode == "L"
    return d


def _test_records(d: Path):
    records = [json.loads(line) for line in (d / "annotations.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "test"]


def _independent_metrics(pred_masks, gt_masks):
    """gIoU / cIoU / Pr@X by hand (numpy), with the documented rule: empty target & empty prediction -> IoU 1,
    contributing nothing to cIoU."""
    ious, inter_total, union_total = [], 0, 0
    for p, g in zip(pred_masks, gt_masks):
        inter = int(np.count_nonzero(p & g))
        union = int(np.count_nonzero(p | g))
        ious.append(1.0 if union == 0 else inter / union)
        inter_total += inter
        union_total += union
    ious = np.array(ious)
    out = {"n": len(ious), "gIoU": float(ious.mean()),
           "cIoU": 1.0 if union_total == 0 else inter_total / union_total}
    for t in THRESHOLDS:
        out[f"Pr@{t}"] = float(np.mean(ious >= t))
    return out, ious


def test_eval_figures_agree_with_an_independent_computation(tmp_path, data, ckpt):
    out_json = tmp_path / "metrics.json"
    proc = refseg("eval", "--data", str(data), "--checkpoint", str(ckpt), "--split", "test", "--json", str(out_json),
                  "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out_json.read_text())
    assert figures["model"] == "cli-test-1" and figures["split"] == "test"

    # the same masks, from the predictor one expression at a time, scored with plain numpy
    model, _ = load_checkpoint(ckpt)
    predictor = RefSegPredictor(model, cache_size=8)
    records = _test_records(data)
    preds, gts = [], []
    for r in records:
        image = np.asarray(Image.open(data / r["image"]).convert("RGB"))
        [p] = predictor.predict(image, r["expression"])
        preds.append(p.mask)
        gts.append(np.asarray(Image.open(data / r["mask"])) > 0)
    expected, ious = _independent_metrics(preds, gts)
    assert 0.0 < expected["gIoU"] < 1.0 and np.any((ious > 0) & (ious < 1))  # a test that can tell figures apart

    assert figures["n"] == expected["n"] == len(records) >= 6
    for key in ("gIoU", "cIoU", *(f"Pr@{t}" for t in THRESHOLDS)):
        assert figures[key] == pytest.approx(expected[key], abs=2e-3), key

    # the printed table shows the same figures, as percentages
    lines = proc.stdout.strip().splitlines()
    header = lines[-2].split()
    values = dict(zip(header, lines[-1].split()))
    assert header == ["N", "gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert int(values["N"]) == expected["n"]
    for key in header[1:]:
        assert float(values[key]) == pytest.approx(100 * figures[key], abs=0.006), key


def test_predict_writes_mask_of_the_image_size_and_overlay(tmp_path, ckpt):
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, size=(45, 100, 3), dtype=np.uint8)  # non-square: 45 rows, 100 columns
    image[10:30, 20:50] = (220, 30, 30)
    Image.fromarray(image).save(tmp_path / "scene.png")
    proc = refseg("predict", "scene.png", "the red building", "-o", "mask.png", "--overlay", "overlay.png",
                  "--checkpoint", str(ckpt), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    mask_img = Image.open(tmp_path / "mask.png")
    assert mask_img.size == (100, 45) and mask_img.mode == "L"
    mask = np.asarray(mask_img)
    assert set(np.unique(mask)) <= {0, 255}
    model, _ = load_checkpoint(ckpt)
    [expected] = RefSegPredictor(model, cache_size=1).predict(image, "the red building")
    assert np.array_equal(mask == 255, expected.mask)
    assert 0 < expected.mask.sum() < expected.mask.size  # non-trivial mask
    assert (report["height"], report["width"]) == (45, 100)
    assert report["pixels"] == int(expected.mask.sum())
    assert report["score"] == pytest.approx(expected.score, abs=1e-4) and 0.0 <= report["score"] <= 1.0
    assert report["model_version"] == "cli-test-1"

    overlay = np.asarray(Image.open(tmp_path / "overlay.png").convert("RGB"))
    assert overlay.shape == image.shape
    assert np.array_equal(overlay[~expected.mask], image[~expected.mask])  # untouched outside the mask
    assert np.any(overlay[expected.mask] != image[expected.mask])  # tinted inside


def test_predict_missing_image_is_a_clear_error(tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # main's return value is the process exit status (`sys.exit(main())`)
    assert main(["predict", "no-such-image.png", "the red building", "-o", "mask.png", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no-such-image.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "mask.png").exists()


@pytest.mark.parametrize("case", ["absent", "not-a-data-set", "empty-split", "bad-checkpoint"])
def test_eval_bad_input_is_a_clear_error(tmp_path, data, ckpt, capsys, case):
    (tmp_path / "plain").mkdir()
    args = {
        "absent": ["--data", str(tmp_path / "missing"), "--checkpoint", str(ckpt)],
        "not-a-data-set": ["--data", str(tmp_path / "plain"), "--checkpoint", str(ckpt)],
        "empty-split": ["--data", str(_one_split_copy(tmp_path, data)), "--checkpoint", str(ckpt)],
        "bad-checkpoint": ["--data", str(data), "--checkpoint", str(tmp_path / "no-ckpt")],
    }[case]
    expected = {
        "absent": "missing: not a directory",
        "not-a-data-set": "annotations.jsonl not found",
        "empty-split": "no samples in split 'test'",
        "bad-checkpoint": "neither a checkpoint directory nor a preset",
    }[case]
    assert main(["eval", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and expected in err, err


def _one_split_copy(tmp_path: Path, data: Path) -> Path:
    """The data set's train split only (so that its test split is empty)."""
    d = tmp_path / "train-only"
    d.mkdir()
    lines = [line for line in (data / "annotations.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    (d / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    for sub in ("images", "masks"):
        os.symlink(data / sub, d / sub)
    return d


def test_train_bad_data_dir_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "missing"), "--init", "preset:tiny", "--out", str(tmp_path / "o"),
                 "--steps", "1", "--threads", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a directory" in err
    assert not (tmp_path / "o").exists()
