"""One device parser (refseg_model.device) for the CLI, the predictor, training and the workers' DEVICE."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from refseg_model.device import cuda_index, resolve_device


def test_device_names():
    assert resolve_device("auto") == resolve_device("") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu" and resolve_device("CUDA:1") == "cuda:1" and resolve_device("cuda") == "cuda"
    for bad in ("gpu", "cuda:x", "cpu:0", "cuda:1:2"):
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_training_uses_the_gpu_the_device_names():
    assert cuda_index("cuda:1", local_rank=0, world=1) == 1  # a worker pinned to GPU 1 trains on GPU 1
    assert cuda_index("cuda", local_rank=0, world=1) == 0
    assert cuda_index("cuda:1", local_rank=3, world=4) == 3  # under torchrun the local rank decides


def test_device_cuda_1_reaches_the_finetune_training_run_as_cuda_1(tmp_path: Path):
    from jobs.settings import Settings
    from workers.finetune import finetune_config

    cfg = finetune_config(Settings.from_env({"DEVICE": "cuda:1", "FINETUNE_STEPS": "7"}), tmp_path / "data",
                          tmp_path / "out", "demo", "v-test")
    assert cfg.device == "cuda:1" and cfg.steps == 7 and cfg.init == "demo" and cfg.out == str(tmp_path / "out")


def test_finetunes_train_part_of_each_batch_with_simulated_clicks(tmp_path: Path):
    from jobs.settings import Settings
    from workers.finetune import finetune_config

    def frac(env):
        return finetune_config(Settings.from_env(env), tmp_path / "d", tmp_path / "o", "demo", "v").interactive_frac

    assert frac({}) == 0.5  # a text-only fine-tune wears off the click skill (README)
    assert frac({"FINETUNE_INTERACTIVE_FRAC": "0"}) == 0.0
    assert frac({"FINETUNE_INTERACTIVE_FRAC": "0.25"}) == 0.25
    assert frac({"FINETUNE_INTERACTIVE_FRAC": "3"}) == 1.0 and frac({"FINETUNE_INTERACTIVE_FRAC": "-1"}) == 0.0


def test_finetunes_train_zoomed_crops_only_when_asked(tmp_path: Path):
    from jobs.settings import Settings
    from workers.finetune import finetune_config

    def zoom(env):
        return finetune_config(Settings.from_env(env), tmp_path / "d", tmp_path / "o", "demo", "v").zoom_frac

    assert zoom({}) == 0.0 and zoom({"FINETUNE_ZOOM_FRAC": "0.5"}) == 0.5 and zoom({"FINETUNE_ZOOM_FRAC": "2"}) == 1.0
