"""Training and fine-tuning: AdamW, linear warm-up + cosine, grad clipping, bf16 autocast on GPU, DDP under
torchrun (gloo on CPU, NCCL on GPU), validation-based checkpoint selection, automatic resume.

Data sources:
  DIR | rrsis-d:PATH | refsegrs:PATH | risbench:PATH   a data set on disk (train split; val split for selection)
  synth:STYLE                                          endless synthetic scenes generated on the fly (STYLE
                                                       default|shifted), with a difficulty curriculum; val is a
                                                       fixed set of generated scenes at full difficulty

Resume state lives next to the output checkpoint, in `OUT.train/` (last weights, optimizer, step, history, and
per rank the data order and random generators): re-running the same command after an interruption continues where
it stopped, on the same batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from formats.datasets.sample import Sample
from formats.images import load_image

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .data.augment import random_flip
from .device import cuda_index, resolve_device
from .modeling.loss import refseg_loss
from .transforms import image_to_frame, mask_to_frame

SYNTH_PREFIX = "synth:"


@dataclass
class TrainConfig:
    data: str
    out: str
    init: str = "demo"
    steps: Optional[int] = None  # optimizer steps; default: `epochs` passes over the train split
    epochs: float = 20.0
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.01
    grad_clip: float = 3.0
    eval_every: Optional[int] = None  # steps; default: about 10 evaluations per run
    max_val: int = 400  # validation samples (selection only; `refseg eval` scores the whole split)
    augment: bool = True  # flips with spatial words rewritten
    curriculum_frac: float = 0.3  # synth: fraction of steps over which difficulty ramps from 0 to 1
    synth_size: int = 0  # synth: scene size; 0 = the model's input size
    seed: int = 0
    device: str = "auto"
    version: Optional[str] = None
    half: bool = False  # store the checkpoint in float16
    resume: bool = True
    plot: bool = False
    progress: bool = True
    threads: Optional[int] = None
    # called on the main rank after every optimizer step with {"step", "steps", "loss"} (loss: the running mean);
    # not part of the checkpoint's recorded config
    on_progress: Optional[Callable[[dict], None]] = field(default=None, repr=False, compare=False)


def _config_record(cfg: TrainConfig) -> dict:
    """The run's settings as stored in the checkpoint's metadata (JSON): everything but the callback."""
    record = asdict(replace(cfg, on_progress=None))
    del record["on_progress"]
    return record


def train_state_dir(out) -> Path:
    """Where `train` keeps its resume state for the checkpoint `out`: `OUT.train/` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".train")


# ------------------------------------------------------------------------------------------ distributed
def _dist_info() -> Tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _setup_device(cfg: TrainConfig) -> Tuple[torch.device, int, int]:
    rank, world, local = _dist_info()
    name = resolve_device(cfg.device)
    use_cuda = torch.cuda.is_available() and name.startswith("cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        index = cuda_index(name, local, world)
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_world))
    return device, rank, world


# ------------------------------------------------------------------------------------------------ data
class FileSource:
    """Batches from samples on disk; each rank reads its own shard of every epoch's permutation."""

    def __init__(self, samples: Sequence[Sample], size: int, augment: bool, seed: int, rank: int, world: int):
        if not samples:
            raise ValueError("no training samples")
        self.samples, self.size, self.augment = list(samples), size, augment
        self.rng = np.random.default_rng(seed + 1000 * rank)
        self.perm_rng = np.random.default_rng(seed)  # same permutation on every rank
        self.rank, self.world = rank, world
        self._order: List[int] = []
        self._cache: Dict[str, np.ndarray] = {}

    def _image(self, path) -> np.ndarray:
        key = str(path)
        img = self._cache.get(key)
        if img is None:
            img = load_image(path)
            if len(self._cache) < 4096:
                self._cache[key] = img
        return img

    def batch(self, n: int, step: int, total: int):
        from formats.datasets.sample_mask import load_sample_mask

        items = []
        for _ in range(n):
            if not self._order:
                perm = self.perm_rng.permutation(len(self.samples))
                self._order = list(perm[self.rank :: self.world]) or list(perm)
            s = self.samples[self._order.pop()]
            image, mask, expr = self._image(s.image), load_sample_mask(s), s.expression
            if self.augment:
                image, mask, expr = random_flip(image, mask, expr, self.rng)
            items.append((image, mask, expr))
        return items

    def state_dict(self) -> dict:
        """Data order and augmentation generators, JSON-serialisable (saved with the resume state)."""
        return {"rng": self.rng.bit_generator.state, "perm_rng": self.perm_rng.bit_generator.state,
                "order": [int(i) for i in self._order]}

    def load_state_dict(self, st: dict) -> None:
        self.rng.bit_generator.state = st["rng"]
        self.perm_rng.bit_generator.state = st["perm_rng"]
        self._order = [int(i) for i in st["order"]]


class SynthSource:
    """Endless generated scenes; difficulty ramps 0 -> 1 over the first `curriculum_frac` of training."""

    def __init__(self, style: str, size: int, curriculum_frac: float, seed: int, rank: int):
        from .data.synth import SceneGenerator

        self.gen = SceneGenerator(size=size, style=style, seed=seed * 7919 + rank + 1)
        self.curriculum_frac = curriculum_frac
        self.rng = np.random.default_rng(seed + 17 * rank)

    def difficulty(self, step: int, total: int) -> float:
        if self.curriculum_frac <= 0:
            return 1.0
        return float(min(1.0, step / max(1.0, self.curriculum_frac * total)))

    def batch(self, n: int, step: int, total: int):
        items = []
        while len(items) < n:
            # one expression per scene per batch keeps the in-batch contrastive negatives meaningful
            scene = self.gen.scene(difficulty=self.difficulty(step, total), max_expressions=1)
            for s in scene.samples[:1]:
                items.append(random_flip(scene.image, s.mask, s.expression, self.rng))
        return items

    def state_dict(self) -> dict:
        return {"gen": self.gen.rng.bit_generator.state, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, st: dict) -> None:
        self.gen.rng.bit_generator.state = st["gen"]
        self.rng.bit_generator.state = st["rng"]


def _save_data_state(state_dir: Path, rank: int, step: int, src) -> None:
    """This rank's data order and generators (numpy and torch) after `step` steps, written atomically."""
    path = state_dir / f"data-rank{rank}.json"
    state_dir.mkdir(parents=True, exist_ok=True)
    torch_rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    path.with_suffix(".tmp").write_text(json.dumps({"step": step, "source": src.state_dict(), "torch": torch_rng}))
    os.replace(path.with_suffix(".tmp"), path)


def _load_data_state(state_dir: Path, rank: int, step: int, src) -> bool:
    """Restore what `_save_data_state` wrote at `step`; False (nothing changed) if it is missing or from another
    step (e.g. a kill between this file and state.pt)."""
    path = state_dir / f"data-rank{rank}.json"
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if st.get("step") != step:
        return False
    src.load_state_dict(st["source"])
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(st["torch"]), dtype=np.uint8).copy()))
    return True


def synth_val_samples(style: str, size: int, n: int, seed: int = 123_456):
    """A fixed validation set of generated (image, mask, expression) at full difficulty."""
    from .data.synth import SceneGenerator

    gen = SceneGenerator(size=size, style=style, seed=seed)
    out = []
    while len(out) < n:
        scene = gen.scene(difficulty=1.0, max_expressions=3)
        out.extend((scene.image, s.mask, s.expression) for s in scene.samples)
    return out[:n]


def collate(items, size: int, device: torch.device):
    frames, targets, valids, exprs = [], [], [], []
    for image, mask, expr in items:
        f, _ = image_to_frame(image, size)
        t, v = mask_to_frame(mask, size)
        frames.append(f)
        targets.append(t)
        valids.append(v)
        exprs.append(expr)
    return torch.stack(frames).to(device), torch.stack(targets).to(device), torch.stack(valids).to(device), exprs


# ------------------------------------------------------------------------------------------- schedule
def lr_factor(step: int, total: int, warmup_frac: float, min_ratio: float) -> float:
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return 0.01 + 0.99 * step / warm
    progress = (step - warm) / max(1, total - warm)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------- evaluation
def quick_eval(model, val, device, batch_size: int = 16) -> Dict[str, float]:
    """Metrics on in-memory (image, mask, expression) triplets, through the predictor's code path."""
    from formats.metrics import RefSegMetrics

    from .predictor import RefSegPredictor

    was_training = model.training
    pred = RefSegPredictor(model, device=device, cache_size=0)
    images = {str(i): img for i, (img, _, _) in enumerate(val)}
    preds = pred.predict_many(images.__getitem__, [(str(i), e) for i, (_, _, e) in enumerate(val)], batch_size)
    metrics = RefSegMetrics()
    for (_, gt, _), p in zip(val, preds):
        metrics.add(p.mask, gt)
    model.train(was_training)
    return metrics.compute()


# ------------------------------------------------------------------------------------------------ main
@dataclass
class TrainResult:
    out: Path
    version: str
    best: Dict[str, float] = field(default_factory=dict)
    history: List[Dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


class _TrainStep(torch.nn.Module):
    """Model + loss as one module, so that DDP sees every parameter use inside its forward."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, input_ids, attention_mask, target, valid):
        out = self.model(images, input_ids, attention_mask)
        return refseg_loss(self.model, out, target, valid, self.model.cfg.loss)




def train(cfg: TrainConfig) -> TrainResult:
    from tqdm import tqdm

    device, rank, world = _setup_device(cfg)
    torch.manual_seed(cfg.seed + rank)
    is_main = rank == 0
    out = Path(cfg.out)
    state_dir = train_state_dir(out)

    model, meta = load_model(cfg.init, device)
    base_version = str(meta.get("version", cfg.init))
    size = model.image_size

    # data
    if cfg.data.startswith(SYNTH_PREFIX):
        style = cfg.data[len(SYNTH_PREFIX):] or "default"
        src = SynthSource(style, cfg.synth_size or size, cfg.curriculum_frac, cfg.seed, rank)
        val = synth_val_samples(style, cfg.synth_size or size, cfg.max_val) if is_main else []
        total = cfg.steps or 10_000
    else:
        from formats.datasets.layouts import load_samples
        from formats.datasets.sample_mask import load_sample_mask

        train_samples = load_samples(cfg.data, "train")
        if not train_samples:
            raise ValueError(f"{cfg.data}: no samples in the train split")
        val_samples = load_samples(cfg.data, "val")[: cfg.max_val]
        src = FileSource(train_samples, size, cfg.augment, cfg.seed, rank, world)
        val = [(load_image(s.image), load_sample_mask(s), s.expression) for s in val_samples] if is_main else []
        steps_per_epoch = math.ceil(len(train_samples) / (cfg.batch_size * world))
        total = cfg.steps or max(1, int(round(cfg.epochs * steps_per_epoch)))
    eval_every = cfg.eval_every or max(1, total // 10)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )

    start, best, history = 0, {}, []
    state_file = state_dir / "state.pt"
    if cfg.resume and state_file.is_file():
        st = torch.load(state_file, map_location="cpu", weights_only=True)
        if st.get("data") == cfg.data and st.get("total") == total:
            last, _ = load_checkpoint(state_dir / "last", device)
            model.load_state_dict(last.state_dict())
            del last
            opt.load_state_dict(st["optimizer"])
            start, best = int(st["step"]), dict(st.get("best") or {})
            history = json.loads(st.get("history", "[]"))
            exact = _load_data_state(state_dir, rank, start, src)
            if is_main:
                print(f"resuming from step {start}/{total} ({state_dir})"
                      f"{'' if exact else '; data order not restored (no data state for this step)'}", flush=True)
        elif is_main:
            print(f"ignoring resume state in {state_dir}: it belongs to another run", flush=True)

    model.train()
    step_fn: torch.nn.Module = _TrainStep(model)
    if world > 1:
        step_fn = torch.nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    version = cfg.version or (f"{base_version}-ft" if not cfg.init.startswith("preset:") else f"{cfg.init[7:]}-trained")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    t0 = time.time()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not (is_main and cfg.progress))
    running: Dict[str, float] = {}
    for step in range(start, total):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, total, cfg.warmup_frac, cfg.min_lr_ratio)
        images, target, valid, exprs = collate(src.batch(cfg.batch_size, step, total), size, device)
        tok = model.encoder.tokenize(exprs, device)
        with autocast:
            parts = step_fn(images, tok["input_ids"], tok["attention_mask"], target, valid)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        for k, v in parts.items():
            v = float(v.detach())
            running[k] = 0.9 * running.get(k, v) + 0.1 * v
        bar.update(1)
        bar.set_postfix(loss=f"{running['loss']:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")

        done = step + 1
        if is_main and cfg.on_progress is not None:
            cfg.on_progress({"step": done, "steps": total, "loss": running["loss"]})
        if done % eval_every == 0 or done == total:
            record = {"step": done, "lr": opt.param_groups[0]["lr"], **{k: round(v, 5) for k, v in running.items()}}
            # before state.pt: a state.pt always has its data state (a kill in between leaves an older state.pt)
            _save_data_state(state_dir, rank, done, src)
            if is_main:
                if val:
                    metrics = quick_eval(model, val, device)
                    record.update({f"val_{k}": v for k, v in metrics.items() if k != "n"})
                    improved = metrics["gIoU"] >= best.get("gIoU", -1.0)
                    if improved:
                        best = {**metrics, "step": done}
                        save_checkpoint(model, out, version, half=cfg.half,
                                        metadata={"base": base_version, "data": cfg.data, "step": done,
                                                  "val": metrics, "train": _config_record(cfg)})
                    bar.write(f"step {done}: val gIoU {metrics['gIoU']:.4f} cIoU {metrics['cIoU']:.4f}"
                              f"{' (best)' if improved else ''}")
                else:  # no validation split: keep the latest
                    save_checkpoint(model, out, version, half=cfg.half,
                                    metadata={"base": base_version, "data": cfg.data, "step": done, "train": _config_record(cfg)})
                history.append(record)
                save_checkpoint(model, state_dir / "last", version)
                torch.save({"step": done, "total": total, "data": cfg.data, "optimizer": opt.state_dict(),
                            "best": best, "history": json.dumps(history)}, state_dir / "state.pt.tmp")
                os.replace(state_dir / "state.pt.tmp", state_file)
            if world > 1:
                dist.barrier()
    bar.close()
    seconds = time.time() - t0
    result = TrainResult(out=out, version=version, best=best, history=history, steps=total, seconds=seconds)
    if is_main:
        (state_dir / "history.json").write_text(json.dumps(history, indent=1))
        if cfg.plot:
            plot_history(history, out / "training_curves.png")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def plot_history(history: List[Dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "bce", "dice", "dense", "contrast", "orth"):
        if any(key in h for h in history):
            axes[0].plot(steps, [h.get(key, float("nan")) for h in history], label=key)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss (EMA)")
    axes[0].set_yscale("log")
    axes[0].legend()
    for key in ("val_gIoU", "val_cIoU", "val_Pr@0.5"):
        if any(key in h for h in history):
            axes[1].plot(steps, [h.get(key, float("nan")) for h in history], label=key[4:])
    axes[1].set_xlabel("step")
    axes[1].set_title("validation")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
