"""Training and fine-tuning: AdamW, linear warm-up + cosine, grad clipping, bf16 autocast on GPU, DDP under
torchrun (gloo on CPU, NCCL on GPU), validation-based checkpoint selection, automatic resume.

Data sources:
  DIR | rrsis-d:PATH | refsegrs:PATH | risbench:PATH   a data set on disk (train split; val split for selection)
  synth:STYLE                                          endless synthetic scenes generated on the fly (STYLE
                                                       default|shifted), with a difficulty curriculum; val is a
                                                       fixed set of generated scenes at full difficulty

Training recipes (refseg_model.recipes, `refseg train --recipe`) are TrainConfig settings plus `loss_weights`,
which `apply_loss_weights` sets on the loaded model's loss config (the one hook through which a run changes the
model's config; the checkpoint then records the weights it was trained with).

Resume state lives next to the output checkpoint, in `OUT.train/` (last weights, optimizer, step, history, and
per rank the data order and random generators): re-running the same command after an interruption continues where
it stopped, on the same batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.distributed as dist

from formats.images import load_image

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .curves import plot_history
from .data.sources import FileSource, SynthSource, load_data_state, save_data_state, synth_val_samples
from .device import setup_training_device
from .evaluate import quick_eval
from .interactive_training import interactive_forward, interactive_plan, rows_without_text_last
from .modeling.loss import interactive_pass_loss, refseg_loss
from .recipes import apply_loss_weights
from .schedule import lr_factor, make_optimizer
from .transforms import image_to_frame, mask_to_frame

SYNTH_PREFIX = "synth:"
SYNTH_VAL = 400  # synthetic validation scenes when max_val is None


@dataclass
class TrainConfig:
    data: str
    out: str
    init: str = "demo"
    steps: Optional[int] = None  # optimizer steps; default: `epochs` passes over the train split
    epochs: float = 20.0
    batch_size: int = 8
    lr: float = 3e-4  # 0: the parameters it applies to are frozen (see decoder_lr)
    # lr of SAM's prompt encoder and mask decoder (the click pathway); None: `lr`. With lr 0 only they train.
    decoder_lr: Optional[float] = None
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.01
    # cosine part of the schedule (see `lr_factor`): None/None = from the end of warm-up to the end of the run
    cosine_start_frac: Optional[float] = None  # flat lr from the end of warm-up until this fraction of the steps
    cosine_period_frac: Optional[float] = None  # cosine T_max as a fraction of the steps (> the rest: no floor)
    grad_clip: float = 3.0
    eval_every: Optional[int] = None  # steps; default: `eval_every_epochs`, else about 10 evaluations per run
    eval_every_epochs: Optional[float] = None  # data sets on disk: validate every this many epochs
    max_val: Optional[int] = 400  # validation samples, None = the whole split (selection only; see `refseg eval`)
    # which checkpoint OUT gets: "best" validation gIoU (text only), or the "last" one (still validated and
    # reported), e.g. when the run trains what text-only validation does not measure (clicks)
    select: str = "best"
    augment: bool = True  # flips with spatial words rewritten
    curriculum_frac: float = 0.3  # synth: fraction of steps over which difficulty ramps from 0 to 1
    # fraction of each batch trained interactively: an initial prompt (text, click, box or text + click), then
    # 1-3 corrective clicks simulated from the current prediction's errors (see `interactive_training.interactive_forward`)
    interactive_frac: float = 0.0
    max_corrections: int = 3  # corrective clicks per interactive step: 1..max_corrections, drawn per step
    # chance that a sample with a small target trains as a zoomed crop around it, from clicks alone
    # (`data.augment.random_zoom`: what zoom-in clicks ask of the model)
    zoom_frac: float = 0.0
    synth_size: int = 0  # synth: scene size; 0 = the model's input size
    seed: int = 0
    device: str = "auto"
    version: Optional[str] = None
    half: bool = False  # store the checkpoint in float16
    resume: bool = True
    plot: bool = False
    progress: bool = True
    threads: Optional[int] = None
    # The model's loss weights for this run ({LossConfig field: weight}; None: the model's own), set by
    # `apply_loss_weights` on the loaded model, and the recipe that set this config (provenance only).
    loss_weights: Optional[Dict[str, float]] = None
    recipe: Optional[str] = None
    # Called on rank 0 after every optimizer step with {"step", "steps", "loss"} (loss: the smoothed training loss
    # of the progress bar and the history) and after every validation with those keys and "val" (the metrics).
    # A runtime hook: never saved with a checkpoint (see `saved_config`).
    on_progress: Optional[Callable[[dict], None]] = field(default=None, repr=False, compare=False,
                                                         metadata={"saved": False})


def saved_config(cfg: TrainConfig) -> dict:
    """The config as recorded in a checkpoint's metadata: every field but the runtime hooks (`on_progress`)."""
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.metadata.get("saved", True)}


def train_state_dir(out) -> Path:
    """Where `train` keeps its resume state for the checkpoint `out`: `OUT.train/` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".train")


# ------------------------------------------------------------------------------------------------ data
def collate(items, size: int, device: torch.device):
    frames, targets, valids, exprs = [], [], [], []
    for image, mask, expr, *_ in items:
        f, _ = image_to_frame(image, size)
        t, v = mask_to_frame(mask, size)
        frames.append(f)
        targets.append(t)
        valids.append(v)
        exprs.append(expr)
    return torch.stack(frames).to(device), torch.stack(targets).to(device), torch.stack(valids).to(device), exprs


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

    def forward(self, images, input_ids, attention_mask, target, valid, interactive: Optional[dict] = None,
                text_rows: Optional[torch.Tensor] = None, zoomed: Optional[torch.Tensor] = None):
        if not interactive:
            out = self.model(images, input_ids, attention_mask)
        else:
            out = interactive_forward(self.model, images, input_ids, attention_mask, target, valid, **interactive)
        parts = refseg_loss(self.model, out, target, valid, self.model.cfg.loss, text_rows)
        if out.interactive_passes:
            extra = interactive_pass_loss(out.interactive_passes, target, valid, self.model.cfg.loss, zoomed)
            parts["passes"] = extra
            # each (row, pass) weighs what a row of the batch weighs in `loss`
            share = len(out.interactive_passes) * interactive["rows"] / target.shape[0]
            parts["loss"] = parts["loss"] + share * extra
        return parts


@dataclass
class _Run:
    """One training run between its steps: where it runs, the model, data, optimizer and what it has done."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    model: torch.nn.Module
    base_version: str
    version: str
    src: Union[FileSource, SynthSource]
    val: list  # (image, mask, expression) on rank 0, [] elsewhere
    total: int
    steps_per_epoch: Optional[int]  # None for endless (synth) data
    params: List[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    start: int = 0
    best: Dict[str, float] = field(default_factory=dict)
    history: List[Dict[str, float]] = field(default_factory=list)
    running: Dict[str, float] = field(default_factory=dict)  # EMA of the loss terms
    # recorded in the checkpoint: trained for zoom-in clicks (this run's --zoom-frac, or its init's), which
    # `RefSegPredictor.from_spec(zoom="auto")` turns on
    zoom_in: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def state_dir(self) -> Path:
        return train_state_dir(self.cfg.out)

    @property
    def eval_every(self) -> int:
        if self.cfg.eval_every:
            return self.cfg.eval_every
        if self.cfg.eval_every_epochs and self.steps_per_epoch:
            return max(1, int(round(self.cfg.eval_every_epochs * self.steps_per_epoch)))
        return max(1, self.total // 10)


def train(cfg: TrainConfig) -> TrainResult:
    """Train or fine-tune `cfg.init` on `cfg.data`, continuing from this run's resume state if there is one."""
    from tqdm import tqdm

    run = _prepare(cfg)
    _restore(run)
    step_fn = _step_module(run)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    t0 = time.time()
    bar = tqdm(total=run.total, initial=run.start, desc="train", unit="step",
               disable=not (run.is_main and cfg.progress))
    for step in range(run.start, run.total):
        _optimisation_step(run, step_fn, autocast, step)
        bar.update(1)
        bar.set_postfix(loss=f"{run.running['loss']:.3f}", lr=f"{run.opt.param_groups[0]['lr']:.1e}")
        done = step + 1
        _report(run, {"step": done, "steps": run.total, "loss": run.running["loss"]})
        if done % run.eval_every == 0 or done == run.total:
            _evaluate_and_save(run, done, bar)
    bar.close()
    return _finish(run, time.time() - t0)


def _prepare(cfg: TrainConfig) -> _Run:
    """Device (and process group), seed, the initial model, the data and the optimizer: a run at step 0."""
    if cfg.select not in ("best", "last"):
        raise ValueError(f"select must be 'best' or 'last', not {cfg.select!r}")
    if not 0.0 <= cfg.zoom_frac <= 1.0:
        raise ValueError(f"zoom_frac must be in [0, 1], not {cfg.zoom_frac!r}")
    device, rank, world = setup_training_device(cfg.device, cfg.threads)
    if cfg.zoom_frac and world > 1:  # zoomed crops have no expression: see `rows_without_text_last`
        raise ValueError("zoom_frac trains zoomed crops without an expression, which trains in a single process "
                         "only (not under torchrun)")
    torch.manual_seed(cfg.seed + rank)
    model, meta = load_model(cfg.init, device)
    changed = apply_loss_weights(model, cfg.loss_weights)
    if rank == 0 and changed:
        print(f"loss weights set on the model's loss config{f' (recipe {cfg.recipe})' if cfg.recipe else ''}: "
              + ", ".join(f"{k} {old:g} -> {new:g}" for k, (old, new) in changed.items()), flush=True)
    if rank == 0 and cfg.recipe:
        print(f"model {model.cfg.name}: input {model.image_size} px (set by --init, not by the recipe)", flush=True)
    clicks_before = ((meta.get("metadata") or {}).get("train") or {}).get("interactive_frac") or 0
    if rank == 0 and clicks_before and not cfg.interactive_frac:
        print(f"note: {cfg.init} was trained with simulated clicks (interactive_frac {clicks_before:g}) and this run "
              "trains on text only, which wears off its click skill (README, 'Fine-tuning on a distribution it has "
              "not seen'); --interactive-frac 0.5 keeps it", flush=True)
    base_version = str(meta.get("version", cfg.init))
    version = cfg.version or (f"{base_version}-ft" if not cfg.init.startswith("preset:") else f"{cfg.init[7:]}-trained")
    src, val, total, steps_per_epoch = _data(cfg, model.image_size, rank, world)
    params, opt = make_optimizer(model, cfg.lr, cfg.decoder_lr, cfg.weight_decay)
    return _Run(cfg, device, rank, world, model, base_version, version, src, val, total, steps_per_epoch, params,
                opt, zoom_in=bool(cfg.zoom_frac or (meta.get("metadata") or {}).get("zoom_in")))


def _data(cfg: TrainConfig, size: int, rank: int, world: int):
    """(this rank's training stream, validation triplets on rank 0, total optimizer steps, steps per epoch or
    None for endless synthetic data)."""
    if cfg.data.startswith(SYNTH_PREFIX):
        style = cfg.data[len(SYNTH_PREFIX):] or "default"
        src = SynthSource(style, cfg.synth_size or size, cfg.curriculum_frac, cfg.seed, rank, cfg.zoom_frac)
        n_val = SYNTH_VAL if cfg.max_val is None else cfg.max_val
        val = synth_val_samples(style, cfg.synth_size or size, n_val) if rank == 0 else []
        return src, val, cfg.steps or 10_000, None
    from formats.datasets.layouts import load_samples
    from formats.datasets.sample_mask import load_sample_mask

    train_samples = load_samples(cfg.data, "train")
    if not train_samples:
        raise ValueError(f"{cfg.data}: no samples in the train split")
    # validation scores text answers: samples without an expression (clicks-only annotations) cannot be scored
    val_all = load_samples(cfg.data, "val")
    val_samples = [s for s in val_all if s.expression][: cfg.max_val]
    if rank == 0 and not val_samples and cfg.max_val != 0:
        why = "no val split" if not val_all else "no val sample has an expression"
        print(f"{cfg.data}: {why}: no checkpoint selection, the latest checkpoint is kept", flush=True)
    src = FileSource(train_samples, size, cfg.augment, cfg.seed, rank, world, cfg.zoom_frac)
    val = []
    if rank == 0:
        for s in val_samples:
            image = load_image(s.image)
            val.append((image, load_sample_mask(s, image_shape=image.shape), s.expression))
    steps_per_epoch = math.ceil(len(train_samples) / (cfg.batch_size * world))
    return src, val, cfg.steps or max(1, int(round(cfg.epochs * steps_per_epoch))), steps_per_epoch


def _restore(run: _Run) -> None:
    """Continue from the state in `train_state_dir(out)` if it is this run's (same data, same total): weights,
    optimizer, step, best, history, and this rank's data order and random generators."""
    cfg, state_dir = run.cfg, run.state_dir
    state_file = state_dir / "state.pt"
    if not (cfg.resume and state_file.is_file()):
        return
    st = torch.load(state_file, map_location="cpu", weights_only=True)
    if st.get("data") != cfg.data or st.get("total") != run.total:
        if run.is_main:
            print(f"ignoring resume state in {state_dir}: it belongs to another run", flush=True)
        return
    last, _ = load_checkpoint(state_dir / "last", run.device)
    run.model.load_state_dict(last.state_dict())
    del last
    run.opt.load_state_dict(st["optimizer"])
    run.start, run.best = int(st["step"]), dict(st.get("best") or {})
    run.history = json.loads(st.get("history", "[]"))
    exact = load_data_state(state_dir, run.rank, run.start, run.src)
    if run.is_main:
        print(f"resuming from step {run.start}/{run.total} ({state_dir})"
              f"{'' if exact else '; data order not restored (no data state for this step)'}", flush=True)


def _step_module(run: _Run) -> torch.nn.Module:
    """The model in training mode with its loss, wrapped in DDP under torchrun. Batch norms whose parameters
    are frozen (e.g. the prompter's, with `--lr 0 --decoder-lr X`) stay in eval mode, so that their running
    statistics, hence the frozen part's output, do not change either."""
    run.model.train()
    for m in run.model.modules():
        params = list(m.parameters())
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and params and not any(p.requires_grad for p in params):
            m.eval()
    step_fn: torch.nn.Module = _TrainStep(run.model)
    if run.world > 1:
        step_fn = torch.nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[run.device.index] if run.device.type == "cuda" else None, find_unused_parameters=True
        )
    return step_fn


def _optimisation_step(run: _Run, step_fn: torch.nn.Module, autocast, step: int) -> None:
    """One optimizer step on this rank's next batch (0-based `step`); updates the running loss terms."""
    cfg, opt = run.cfg, run.opt
    for g in opt.param_groups:
        g["lr"] = g.get("base_lr", cfg.lr) * lr_factor(step, run.total, cfg.warmup_frac, cfg.min_lr_ratio, cfg.cosine_start_frac,
                                     cfg.cosine_period_frac)
    items = run.src.batch(cfg.batch_size, step, run.total)
    images, target, valid, exprs = collate(items, run.model.image_size, run.device)
    zoomed = torch.tensor([bool(getattr(it, "zoomed", False)) for it in items], device=run.device)
    (images, target, valid, zoomed), exprs, text_rows = rows_without_text_last((images, target, valid, zoomed),
                                                                               exprs, run.world)
    tok = run.model.encoder.tokenize(exprs, run.device)
    no_text = 0 if text_rows is None else int((~text_rows).sum())
    plan = interactive_plan(images.shape[0], cfg.interactive_frac, cfg.seed, run.rank, step, no_text,
                            cfg.max_corrections)
    with autocast:
        parts = step_fn(images, tok["input_ids"], tok["attention_mask"], target, valid, plan, text_rows,
                        zoomed if bool(zoomed.any()) else None)
    opt.zero_grad(set_to_none=True)
    parts["loss"].backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip)
    opt.step()
    for k, v in parts.items():
        v = float(v.detach())
        run.running[k] = 0.9 * run.running.get(k, v) + 0.1 * v


def _evaluate_and_save(run: _Run, done: int, bar) -> None:
    """After `done` steps: every rank saves its data state; rank 0 validates, keeps the best checkpoint (or the
    latest, without a validation split), appends to the history and saves the resume state."""
    record = {"step": done, "lr": run.opt.param_groups[0]["lr"], **{k: round(v, 5) for k, v in run.running.items()}}
    # before state.pt: a state.pt always has its data state (a kill in between leaves an older state.pt)
    save_data_state(run.state_dir, run.rank, done, run.src)
    if run.is_main:
        _select_checkpoint(run, done, record, bar)
        run.history.append(record)
        _save_resume_state(run, done)
    if run.world > 1:
        dist.barrier()


def _select_checkpoint(run: _Run, done: int, record: dict, bar) -> None:
    """Validate and write the output checkpoint if it is the best so far; adds the metrics to `record`."""
    cfg = run.cfg
    provenance = {"base": run.base_version, "data": cfg.data, "step": done, "zoom_in": run.zoom_in}
    if not run.val:  # no validation split: keep the latest
        save_checkpoint(run.model, run.out, run.version, half=cfg.half,
                        metadata={**provenance, "train": saved_config(cfg)})
        return
    metrics = quick_eval(run.model, run.val, run.device)
    record.update({f"val_{k}": v for k, v in metrics.items() if k != "n"})
    improved = metrics["gIoU"] >= run.best.get("gIoU", -1.0)
    if improved or cfg.select == "last":
        run.best = {**metrics, "step": done}
        save_checkpoint(run.model, run.out, run.version, half=cfg.half,
                        metadata={**provenance, "val": metrics, "train": saved_config(cfg)})
    tags = (" (best)" if improved else "") + (" (kept: --select last)" if cfg.select == "last" else "")
    bar.write(f"step {done}: val gIoU {metrics['gIoU']:.4f} cIoU {metrics['cIoU']:.4f}{tags}")
    _report(run, {"step": done, "steps": run.total, "loss": run.running["loss"], "val": metrics})


def _save_resume_state(run: _Run, done: int) -> None:
    """Last weights and the optimizer, step, best and history, for `_restore` (state.pt replaced atomically)."""
    state_dir = run.state_dir
    save_checkpoint(run.model, state_dir / "last", run.version)
    torch.save({"step": done, "total": run.total, "data": run.cfg.data, "optimizer": run.opt.state_dict(),
                "best": run.best, "history": json.dumps(run.history)}, state_dir / "state.pt.tmp")
    os.replace(state_dir / "state.pt.tmp", state_dir / "state.pt")


def _report(run: _Run, info: dict) -> None:
    if run.is_main and run.cfg.on_progress is not None:
        run.cfg.on_progress(info)


def _finish(run: _Run, seconds: float) -> TrainResult:
    """The result; rank 0 writes history.json (and the curves with `plot`); the process group is closed."""
    result = TrainResult(out=run.out, version=run.version, best=run.best, history=run.history, steps=run.total,
                         seconds=seconds)
    if run.is_main:
        (run.state_dir / "history.json").write_text(json.dumps(run.history, indent=1))
        if run.cfg.plot:
            plot_history(run.history, run.out / "training_curves.png")
    if run.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result
