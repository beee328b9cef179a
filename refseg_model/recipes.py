"""Training recipes: named sets of `TrainConfig` settings and loss weights, applied by `refseg train --recipe`.

A recipe is data: `RECIPES` maps a name to a `Recipe` (TrainConfig field -> value, LossConfig field -> weight,
and what the recipe cannot set, with the reason). The command line applies it between TrainConfig's defaults and
the user's explicit flags (explicit flags win) and prints what it set (`recipe_table`). Loss weights live in the
model's config (`RefSegConfig.loss`), which exists only once the model is loaded, so they travel as
`TrainConfig.loss_weights` and `train()` sets them on the loaded model (`refseg_model.recipes.apply_loss_weights`).

rsrefseg2 -- the training configuration of RSRefSeg 2 (Chen et al., arXiv 2507.06231), as its released configs
`configs_RSRefSeg2/{rrsisd,risbench,refsegrs}_training.py` set it (../shared/docs/model.md sections 1.3, 1.5,
1.6). `--recipe rsrefseg2` picks the variant of the data set named by `--data` (rrsis-d: / risbench: /
refsegrs:; any other data gets the RRSIS-D variant, and the table says so); the variants can also be named.

    optimiser     AdamW, betas (0.9, 0.999) (train.py's), lr 1e-4 (RefSegRS 2e-4), weight decay 0.05
    schedule      linear warm-up from 0.01 x lr over the first 5 epochs (per step), flat lr until 10 % of the
                  epochs, then cosine towards 0.01 x lr with a period longer than the rest of the run (T_max 390 of
                  300 epochs; RefSegRS 1080 of 600), so the lr never reaches its floor. Expressed as fractions of
                  the run, so that --epochs / --steps scale the shape.
    epochs/batch  300 epochs (RefSegRS 600), batch 8 per process (the configs' "per GPU")
    gradient      clipping at norm 3.0
    augmentation  none (the paper's train pipeline is load, resize, pack)
    losses        5 BCE + 5 Dice + 0.5 query orthogonality + 0.5 region-text contrastive; the dense-prompt BCE
                  (which the tiny/demo presets turn on, for training from scratch) off
    selection     validate every 10 epochs on the whole val split, keep the best gIoU. The paper's configs
                  validate on the *test* split (model.md 1.6 caveat); this recipe never does: without a val
                  split, training keeps the latest checkpoint and says so.

Not set by the recipe (printed with the table): the input size (1024 px SAM, 512 px SigLIP in the paper) is
the model's, chosen by --init; precision and engine (the paper: DeepSpeed ZeRO-2, bf16; here DDP under torchrun
and bf16 autocast on CUDA, fp32 weights, whatever the recipe); the image preprocessing (the model's transforms).

UNVERIFIED (the notes could not confirm them): the number of GPUs, hence the global batch (the configs give 8
per GPU; `dist_train.sh ${GPU_NUM}`); whether the paper's AdamW decays biases and norms (train.py exempts them;
mmengine decays every parameter unless a paramwise_cfg says otherwise, and the notes do not say); the reported
figures themselves. The schedule, loss weights and selection are read from the released configs and code, not
from the paper's text.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple


@dataclass(frozen=True)
class Recipe:
    """A named training configuration: TrainConfig overrides, loss weights, and what it leaves to others."""

    name: str
    title: str
    settings: Dict[str, Any]  # TrainConfig field -> value
    loss_weights: Dict[str, float]  # LossConfig field -> weight
    notes: Dict[str, str] = field(default_factory=dict)  # setting -> what the value means (printed)
    fixed: Tuple[Tuple[str, str, str], ...] = ()  # (setting, value, note): what train() always does, as the recipe
    not_set: Tuple[Tuple[str, str], ...] = ()  # (setting, the paper's value and why the recipe cannot set it)


_RSREFSEG2_LOSS = {"bce": 5.0, "dice": 5.0, "orthogonality": 0.5, "contrastive": 0.5, "dense": 0.0}

_RSREFSEG2_FIXED = (
    ("optimizer", "AdamW", "betas (0.9, 0.999): train.py's only optimiser, as the paper's"),
    ("selection", "best val gIoU", "train.py's; the paper's configs select on test, never done here"),
)

_RSREFSEG2_NOT_SET = (
    ("input size", "paper 1024 px SAM / 512 px SigLIP (notes 1.3): the model's, i.e. --init"),
    ("precision", "paper bf16 under DeepSpeed ZeRO-2; here bf16 autocast on CUDA, DDP under torchrun"),
    ("GPUs", "UNVERIFIED (so is the paper's global batch); batch_size is per process"),
    ("no decay on biases/norms", "train.py's; whether the paper decays them: UNVERIFIED"),
)


def _rsrefseg2(variant: str, data_name: str, lr: float, epochs: int, cosine_period_epochs: int) -> Recipe:
    return Recipe(
        name=f"rsrefseg2-{variant}",
        title=f"RSRefSeg 2, configs_RSRefSeg2/{variant}_training.py (model.md 1.5-1.6, {data_name} column)",
        settings={
            "lr": lr,
            "weight_decay": 0.05,
            "epochs": float(epochs),
            "batch_size": 8,
            "warmup_frac": 5 / epochs,
            "cosine_start_frac": 0.1,
            "cosine_period_frac": cosine_period_epochs / epochs,
            "min_lr_ratio": 0.01,
            "grad_clip": 3.0,
            "augment": False,
            "eval_every_epochs": 10.0,
            "max_val": None,
        },
        loss_weights=dict(_RSREFSEG2_LOSS),
        notes={
            "lr": "AdamW (betas 0.9, 0.999)",
            "epochs": "steps = epochs x ceil(train samples / (batch x processes))",
            "batch_size": "per process",
            "warmup_frac": f"linear from 0.01 x lr over 5 of {epochs} epochs",
            "cosine_start_frac": f"lr flat until epoch {epochs // 10}, then cosine",
            "cosine_period_frac": f"T_max {cosine_period_epochs} of {epochs} epochs: never reaches the floor",
            "min_lr_ratio": "cosine floor (eta_min) = 0.01 x lr",
            "grad_clip": "max gradient norm",
            "augment": "no flips, no crops, no colour",
            "eval_every_epochs": "validate, keep the best val gIoU",
            "max_val": "the whole val split",
        },
        fixed=_RSREFSEG2_FIXED,
        not_set=_RSREFSEG2_NOT_SET,
    )


RECIPES: Dict[str, Recipe] = {
    r.name: r
    for r in (
        _rsrefseg2("rrsisd", "RRSIS-D", lr=1e-4, epochs=300, cosine_period_epochs=390),
        _rsrefseg2("risbench", "RISBench", lr=1e-4, epochs=300, cosine_period_epochs=390),
        _rsrefseg2("refsegrs", "RefSegRS", lr=2e-4, epochs=600, cosine_period_epochs=1080),
    )
}

# A name that picks its variant from the --data spec's layout prefix.
_BY_DATA = {"rsrefseg2": {"rrsis-d": "rsrefseg2-rrsisd", "rrsisd": "rsrefseg2-rrsisd",
                          "risbench": "rsrefseg2-risbench", "refsegrs": "rsrefseg2-refsegrs",
                          None: "rsrefseg2-rrsisd"}}


def recipe_names() -> List[str]:
    return [*_BY_DATA, *RECIPES]


def resolve_recipe(name: str, data: str) -> Tuple[Recipe, str]:
    """(the recipe, why this one) for `--recipe NAME --data DATA`; ValueError for an unknown name."""
    if name in RECIPES:
        return RECIPES[name], "named"
    if name not in _BY_DATA:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    prefix, sep, _ = str(data).partition(":")
    prefix = prefix.lower() if sep else None
    table = _BY_DATA[name]
    if prefix is not None and prefix in table:
        return RECIPES[table[prefix]], f"for --data {prefix}:"
    return RECIPES[table[None]], "--data is none of rrsis-d:/risbench:/refsegrs:, so the RRSIS-D variant"


def apply_recipe(recipe: Recipe, explicit: Mapping[str, Any],
                 supersedes: Mapping[str, Tuple[str, ...]] = ()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """TrainConfig keyword arguments: the recipe's settings, then the explicit ones on top (explicit wins).

    `explicit`: TrainConfig field -> value the user gave. `supersedes`: an explicit field -> recipe fields it
    makes moot (e.g. steps -> epochs). Returns (kwargs, overridden: recipe field -> the explicit field that won).
    """
    kwargs = {**recipe.settings, **explicit, "loss_weights": dict(recipe.loss_weights), "recipe": recipe.name}
    overridden: Dict[str, Any] = {}
    for name in explicit:
        if name in recipe.settings:
            overridden[name] = name
        for moot in dict(supersedes).get(name, ()):
            if moot in recipe.settings:
                overridden[moot] = name
    return kwargs, overridden


def _show(value: Any) -> str:
    if value is None:
        return "all"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def recipe_table(recipe: Recipe, why: str, kwargs: Mapping[str, Any], overridden: Mapping[str, str],
                 flags: Mapping[str, str], remarks: Tuple[str, ...] = ()) -> str:
    """What `--recipe` set, as a table of setting = value with where each value comes from.

    `kwargs`: the TrainConfig keyword arguments after `apply_recipe`; `overridden`: its second result;
    `flags`: TrainConfig field -> its command-line flag; `remarks`: extra lines (e.g. about the data).
    """
    rows: List[Tuple[str, str, str]] = []
    for name, value in recipe.settings.items():
        winner = overridden.get(name)
        if winner is None:
            rows.append((name, _show(value), recipe.notes.get(name, "")))
        elif winner == name:
            rows.append((name, _show(kwargs[name]), f"YOUR {flags.get(name, name)} (recipe: {_show(value)})"))
        else:
            rows.append((name, f"({_show(value)})",
                         f"unused: YOUR {flags.get(winner, winner)} {_show(kwargs[winner])} wins"))
    rows.append(("loss weights", ", ".join(f"{k} {_show(v)}" for k, v in recipe.loss_weights.items()),
                 "set on the loaded model's loss config"))
    rows += list(recipe.fixed)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows if len(r[1]) <= 16)  # longer values overflow their column
    lines = [f"recipe {recipe.name}: {recipe.title}" + ("" if why == "named" else f"; {why}")]
    lines += [f"  {a:<{w0}} = {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
    if recipe.not_set:
        lines.append("  not set by the recipe:")
        w2 = max(len(name) for name, _ in recipe.not_set)
        lines += [f"    {name:<{w2}}  {why_not}" for name, why_not in recipe.not_set]
    lines += [f"  {r}" for r in remarks]
    mine = sorted({flags.get(v, v) for v in overridden.values()})
    lines.append(f"  explicit flags overriding the recipe: {', '.join(mine) if mine else 'none'}")
    return "\n".join(lines)


def apply_loss_weights(model, weights: Optional[Dict[str, float]]) -> Dict[str, Tuple[float, float]]:
    """Set `weights` ({LossConfig field: weight}) on the loaded model's loss config, `model.cfg.loss`.

    The hook through which a recipe sets the loss weights: they belong to the model's config (what
    `refseg_loss` reads at every step), which exists only once `cfg.init` is loaded. The checkpoints this run
    writes carry the config, so they record the weights they were trained with (and a fine-tune from one starts
    with them). Returns {field: (old, new)} for the weights that changed; ValueError for an unknown field.
    """
    if not weights:
        return {}
    loss = model.cfg.loss
    known = {f.name for f in fields(loss)}
    unknown = sorted(set(weights) - known)
    if unknown:
        raise ValueError(f"unknown loss weight(s) {unknown}; the model's loss config has {sorted(known)}")
    new = {k: float(v) for k, v in weights.items()}
    changed = {k: (float(getattr(loss, k)), v) for k, v in new.items() if float(getattr(loss, k)) != v}
    model.cfg.loss = replace(loss, **new)
    return changed
