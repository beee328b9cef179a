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
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

from formats.images import load_image

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .curves import plot_history
from .data.sources import FileSource, SynthSource, load_data_state, save_data_state, synth_val_samples
from .device import cuda_index, resolve_device
from .evaluate import quick_eval
from .modeling.loss import interactive_pass_loss, refseg_loss
from .recipes import apply_loss_weights
from .schedule import lr_factor
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
    # 1-3 corrective clicks simulated from the current prediction's errors (see `_interactive_forward`)
    interactive_frac: float = 0.0
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

    def forward(self, images, input_ids, attention_mask, target, valid, interactive: Optional[dict] = None):
        if not interactive:
            out = self.model(images, input_ids, attention_mask)
        else:
            out = _interactive_forward(self.model, images, input_ids, attention_mask, target, valid, **interactive)
        parts = refseg_loss(self.model, out, target, valid, self.model.cfg.loss)
        if out.interactive_passes:
            extra = interactive_pass_loss(out.interactive_passes, target, valid, self.model.cfg.loss)
            parts["passes"] = extra
            # each (row, pass) weighs what a row of the batch weighs in `loss`
            share = len(out.interactive_passes) * interactive["rows"] / target.shape[0]
            parts["loss"] = parts["loss"] + share * extra
        return parts


def interactive_plan(batch: int, frac: float, seed: int, rank: int, step: int) -> Optional[dict]:
    """Which rows of this step's batch train interactively, and how: the last round(frac * batch) rows, each
    with an initial prompt kind (text, click, box, text + click), 1-3 corrective clicks for the whole batch.

    Drawn from a generator seeded by (run seed, rank, step) alone, so that a resumed run draws exactly what an
    uninterrupted one did. The plan carries that generator's seed for the in-step sampling (first clicks inside
    the target, box jitter) too.
    """
    k = int(round(frac * batch))
    if k <= 0:
        return None
    from .interactive import INITIAL_KINDS

    g_seed = (int(seed) * 1_000_003 + int(rank) * 7919 + int(step)) % (2 ** 63)
    g = torch.Generator().manual_seed(g_seed)
    kinds = torch.randint(len(INITIAL_KINDS), (k,), generator=g).tolist()
    corrections = int(torch.randint(1, 4, (1,), generator=g))
    return {"rows": k, "kinds": [INITIAL_KINDS[i] for i in kinds], "corrections": corrections,
            "seed": int(torch.randint(2 ** 62, (1,), generator=g))}


def _interactive_forward(model, images, input_ids, attention_mask, target, valid, rows: int, kinds: List[str],
                         corrections: int, seed: int):
    """The model's output on a batch whose last `rows` rows are decoded interactively (SAM's / RITM's
    iterative training): initial prompt -> prediction -> corrective click at the deepest point of the larger
    error region (`interactive.next_clicks`) with the previous low-res logits (detached) as mask input,
    `corrections` times. Every pass is supervised, as SAM trains: the loss sees the last pass in mask_logits and
    the earlier ones in `interactive_passes` (among them the initial prompt's answer without a previous mask:
    a first click or a box alone, which the click tool answers with SAM's no-mask embedding; supervising only
    the last pass, which always has a previous mask, left that embedding and that case untrained). Other rows:
    text as usual.

    images B x 3 x S x S, target/valid B x 1 x S x S; returns a RefSegOutput whose mask_logits (B x 1 x M x M)
    hold the text-only answer for the first B - rows rows and the final interactive answer for the rest, and
    whose interactive_passes hold the `corrections` earlier answers of the last `rows` rows (rows x 1 x M x M).
    """
    from .interactive import boxes_of, next_clicks, random_points_in
    from .modeling.refseg import BOX_BR_LABEL, BOX_TL_LABEL, NEG_LABEL, PAD_LABEL, POS_LABEL

    b, dev = images.shape[0], images.device
    s, m = model.image_size, model.sam.mask_input_size
    emb = model.encode_image(images)
    text, out = model.encode_text_prompts(emb, input_ids, attention_mask)
    plain = torch.arange(0, b - rows, device=dev)
    inter = torch.arange(b - rows, b, device=dev)
    parts = []
    if plain.numel():
        none = torch.zeros(plain.numel(), 0, 2, device=dev), torch.zeros(plain.numel(), 0, dtype=torch.long, device=dev)
        parts.append(model.decode_interactive(emb.index(plain), *none, text.index(plain))[0])

    g = torch.Generator().manual_seed(seed)
    emb_i, text_i = emb.index(inter), text.index(inter)
    tgt = target[inter, 0] > 0.5
    val = valid[inter, 0] > 0.5
    # the error maps at the decoder's M x M grid (frame S x S -> M x M)
    tgt_m = (torch.nn.functional.interpolate(target[inter], size=(m, m), mode="area")[:, 0] >= 0.5)
    val_m = (torch.nn.functional.interpolate(valid[inter], size=(m, m), mode="area")[:, 0] >= 0.5)
    q = 1 + corrections  # slot 0: the initial click; slots 1..: corrective clicks; then the two box corners
    coords = torch.zeros(rows, q + 2, 2, device=dev)
    labels = torch.full((rows, q + 2), PAD_LABEL, dtype=torch.long, device=dev)
    kinds_t = kinds
    with_text = torch.tensor([k in ("text", "text+click") for k in kinds_t], device=dev)
    click0 = torch.tensor([k in ("click", "text+click") for k in kinds_t], device=dev)
    box0 = torch.tensor([k == "box" for k in kinds_t], device=dev)
    xy, ok = random_points_in(tgt & val, g)
    coords[:, 0] = xy.to(dev)
    labels[:, 0] = torch.where(click0 & ok.to(dev), torch.full_like(labels[:, 0], POS_LABEL), labels[:, 0])
    box = boxes_of(tgt & val, g).to(dev)
    coords[:, q] = torch.where(box0[:, None], box[:, :2], coords[:, q])
    coords[:, q + 1] = torch.where(box0[:, None], box[:, 2:], coords[:, q + 1])
    labels[:, q] = torch.where(box0, torch.full_like(labels[:, q], BOX_TL_LABEL), labels[:, q])
    labels[:, q + 1] = torch.where(box0, torch.full_like(labels[:, q + 1], BOX_BR_LABEL), labels[:, q + 1])
    prev = None
    passes = []
    for r in range(corrections):
        logits, _ = model.decode_interactive(emb_i, coords, labels, text_i, with_text, prev)
        passes.append(logits)
        with torch.no_grad():
            xy, positive, _ = next_clicks(logits[:, 0].detach() > 0, tgt_m, val_m)
            coords = coords.clone()
            labels = labels.clone()
            coords[:, 1 + r] = (xy + 0.5) * (s / m) - 0.5  # M-grid pixel -> frame pixel
            labels[:, 1 + r] = torch.where(positive, POS_LABEL, NEG_LABEL)
            prev = logits.detach().float()
    final, _ = model.decode_interactive(emb_i, coords, labels, text_i, with_text, prev)
    parts.append(final)
    out.mask_logits = torch.cat(parts)
    out.interactive_passes = tuple(passes)
    return out


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
    device, rank, world = _setup_device(cfg)
    torch.manual_seed(cfg.seed + rank)
    model, meta = load_model(cfg.init, device)
    changed = apply_loss_weights(model, cfg.loss_weights)
    if rank == 0 and changed:
        print(f"loss weights set on the model's loss config{f' (recipe {cfg.recipe})' if cfg.recipe else ''}: "
              + ", ".join(f"{k} {old:g} -> {new:g}" for k, (old, new) in changed.items()), flush=True)
    if rank == 0 and cfg.recipe:
        print(f"model {model.cfg.name}: input {model.image_size} px (set by --init, not by the recipe)", flush=True)
    base_version = str(meta.get("version", cfg.init))
    version = cfg.version or (f"{base_version}-ft" if not cfg.init.startswith("preset:") else f"{cfg.init[7:]}-trained")
    src, val, total, steps_per_epoch = _data(cfg, model.image_size, rank, world)
    params, opt = _optimizer(model, cfg)
    return _Run(cfg, device, rank, world, model, base_version, version, src, val, total, steps_per_epoch, params,
                opt)


def _data(cfg: TrainConfig, size: int, rank: int, world: int):
    """(this rank's training stream, validation triplets on rank 0, total optimizer steps, steps per epoch or
    None for endless synthetic data)."""
    if cfg.data.startswith(SYNTH_PREFIX):
        style = cfg.data[len(SYNTH_PREFIX):] or "default"
        src = SynthSource(style, cfg.synth_size or size, cfg.curriculum_frac, cfg.seed, rank)
        n_val = SYNTH_VAL if cfg.max_val is None else cfg.max_val
        val = synth_val_samples(style, cfg.synth_size or size, n_val) if rank == 0 else []
        return src, val, cfg.steps or 10_000, None
    from formats.datasets.layouts import load_samples
    from formats.datasets.sample_mask import load_sample_mask

    train_samples = load_samples(cfg.data, "train")
    if not train_samples:
        raise ValueError(f"{cfg.data}: no samples in the train split")
    val_samples = load_samples(cfg.data, "val")[: cfg.max_val]
    if rank == 0 and not val_samples and cfg.max_val != 0:
        print(f"{cfg.data}: no val split: no checkpoint selection, the latest checkpoint is kept", flush=True)
    src = FileSource(train_samples, size, cfg.augment, cfg.seed, rank, world)
    val = []
    if rank == 0:
        for s in val_samples:
            image = load_image(s.image)
            val.append((image, load_sample_mask(s, image_shape=image.shape), s.expression))
    steps_per_epoch = math.ceil(len(train_samples) / (cfg.batch_size * world))
    return src, val, cfg.steps or max(1, int(round(cfg.epochs * steps_per_epoch))), steps_per_epoch


DECODER_PREFIXES = ("sam.prompt_encoder.", "sam.mask_decoder.")  # `TrainConfig.decoder_lr` applies to these


def _optimizer(model, cfg: TrainConfig) -> Tuple[List[torch.nn.Parameter], torch.optim.Optimizer]:
    """AdamW over the trainable parameters, without weight decay on biases and norms; SAM's prompt encoder and
    mask decoder at `cfg.decoder_lr` (if set), the rest at `cfg.lr`. Parameters whose lr is 0 are frozen
    (requires_grad off: no gradient is computed for them). Each group's `base_lr` is its lr before the
    schedule."""
    groups, params = [], []
    for decoder in (True, False):
        lr = cfg.decoder_lr if decoder and cfg.decoder_lr is not None else cfg.lr
        mine = [p for n, p in model.named_parameters()
                if p.requires_grad and n.startswith(DECODER_PREFIXES) == decoder]
        if lr == 0:
            for p in mine:
                p.requires_grad_(False)
            continue
        params.extend(mine)
        for wd, ps in ((cfg.weight_decay, [p for p in mine if p.ndim >= 2]), (0.0, [p for p in mine if p.ndim < 2])):
            if ps:
                groups.append({"params": ps, "weight_decay": wd, "lr": lr, "base_lr": lr})
    if not groups:
        raise ValueError("nothing to train: every learning rate is 0 (or every parameter is frozen)")
    return params, torch.optim.AdamW(groups, lr=cfg.lr)


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
    images, target, valid, exprs = collate(run.src.batch(cfg.batch_size, step, run.total), run.model.image_size,
                                           run.device)
    tok = run.model.encoder.tokenize(exprs, run.device)
    plan = interactive_plan(images.shape[0], cfg.interactive_frac, cfg.seed, run.rank, step)
    with autocast:
        parts = step_fn(images, tok["input_ids"], tok["attention_mask"], target, valid, plan)
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
    provenance = {"base": run.base_version, "data": cfg.data, "step": done}
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
