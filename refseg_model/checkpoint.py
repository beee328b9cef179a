"""RefSeg checkpoints: a directory with `config.json` (format, version, model config, metadata) and
`model.safetensors` (the weights that are not loaded from foundation checkpoints).

Models whose towers are built from configs (tiny, demo: trained from scratch) store every weight; models on
pretrained CLIP/SigLIP + SAM store only what training changes (prompter, SAM prompt encoder and mask decoder,
LoRA adapters, unfrozen towers). Nothing is ever unpickled: safetensors only.
Writes are atomic at directory level (write a sibling temp dir, then rename), so a reader never sees a
half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .build import DEMO_CHECKPOINT, PRESETS, build_model, preset_config
from .config import CHECKPOINT_FORMAT, RefSegConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used."""


def stores_full_model(cfg: RefSegConfig) -> bool:
    return cfg.encoder.pretrained is None and cfg.sam.checkpoint is None


def checkpoint_state(model) -> Dict[str, torch.Tensor]:
    """The tensors a checkpoint of `model` holds (see module docstring)."""
    state = model.state_dict()
    if stores_full_model(model.cfg):
        return state
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    trainable_prefixes = ("prompter.", "sam.prompt_encoder.", "sam.mask_decoder.")
    keep |= {n for n, _ in model.named_buffers() if n.startswith(trainable_prefixes)}
    return {k: v for k, v in state.items() if k in keep}


def save_checkpoint(
    model,
    out_dir: Union[str, Path],
    version: str,
    *,
    metadata: Optional[Dict[str, Any]] = None,
    half: bool = False,
) -> Path:
    """Write `model` as a checkpoint directory; `half` stores float tensors as float16 (smaller files)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, v in checkpoint_state(model).items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stores": "full" if stores_full_model(model.cfg) else "trainable",
        "dtype": "float16" if half else "float32",
        "config": model.cfg.to_dict(),
        "metadata": metadata or {},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT, "version": version})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        for f in (tmp / WEIGHTS_FILE, tmp / CONFIG_FILE):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o644)  # shared MODEL_DIR: workers may run as other users
        tmp.chmod(0o755)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_checkpoint_meta(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} is not a refseg checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: invalid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{cfg_file}: no model 'config' object")
    return meta


def load_checkpoint(path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """Load a checkpoint directory -> (model in eval mode, metadata dict)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        cfg = RefSegConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid model config ({exc})") from exc
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} missing")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own SafetensorError (not a ValueError) for bad files
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    model = build_model(cfg)
    expected = checkpoint_state(model)
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unexpected or missing:
        raise CheckpointError(
            f"{path}: weights do not match the configured model ({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    model.to(device).eval()
    return model, meta


def load_model(spec: str, device: Union[str, torch.device] = "cpu") -> Tuple[Any, Dict[str, Any]]:
    """`demo` (the shipped checkpoint), `preset:NAME` or a preset name other than demo (fresh weights), or a
    checkpoint directory."""
    if spec.startswith("preset:"):
        name = spec[len("preset:"):]
        cfg = preset_config(name)
        model = build_model(cfg).to(device).eval()
        return model, {"version": f"{name}-init", "config": cfg.to_dict(), "metadata": {}}
    if spec == "demo":
        if not (DEMO_CHECKPOINT / CONFIG_FILE).is_file():
            raise CheckpointError(f"the demo checkpoint is missing from {DEMO_CHECKPOINT}")
        return load_checkpoint(DEMO_CHECKPOINT, device)
    p = Path(spec)
    if p.is_dir():
        return load_checkpoint(p, device)
    if spec in PRESETS:
        cfg = preset_config(spec)
        model = build_model(cfg).to(device).eval()
        return model, {"version": f"{spec}-init", "config": cfg.to_dict(), "metadata": {}}
    raise CheckpointError(f"{spec!r} is neither a checkpoint directory nor a preset ({', '.join(PRESETS)})")
