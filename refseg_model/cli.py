"""The `refseg` command line: synth, train, eval, predict, presets.

    refseg synth OUT [--images N]
    refseg train --data DIR [--init demo|PRESET|CKPT] --out CKPT [--plot]
    refseg eval --data DIR [--checkpoint CKPT] [--split test]
    refseg predict IMAGE "expression" -o mask.png [--checkpoint CKPT] [--overlay out.png]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def cmd_synth(args) -> int:
    from .data.synth import write_dataset

    try:
        fractions = tuple(float(x) for x in args.splits.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        print(f"error: --splits must be three non-negative fractions like 0.8,0.1,0.1, got {args.splits!r}",
              file=sys.stderr)
        return 2
    n = write_dataset(args.out, n_images=args.images, size=args.size, style=args.style, seed=args.seed,
                      expressions_per_image=args.expressions_per_image,
                      split_fractions=tuple(f / sum(fractions) for f in fractions))
    print(f"wrote {n} samples ({args.images} images, style {args.style}) to {args.out}")
    return 0


def cmd_train(args) -> int:
    from .metrics import format_table
    from .train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, init=args.init, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_frac=args.warmup,
        eval_every=args.eval_every, max_val=args.max_val, augment=not args.no_augment,
        curriculum_frac=args.curriculum, seed=args.seed, device=args.device, version=args.version,
        half=args.half, resume=not args.restart, plot=args.plot, threads=args.threads,
    )
    result = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"\ntrained {result.steps} steps in {result.seconds / 60:.1f} min; checkpoint {result.out} "
              f"(version {result.version})")
        if result.best:
            print(format_table(result.best, title=f"best validation (step {result.best.get('step')})"))
        if args.plot:
            print(f"training curves: {result.out / 'training_curves.png'}")
    return 0


def cmd_eval(args) -> int:
    from .data.public import load_samples
    from .evaluate import evaluate_samples
    from .metrics import format_table
    from .predictor import RefSegPredictor

    samples = load_samples(args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    if not samples:
        print(f"error: no samples in split {args.split!r} of {args.data}", file=sys.stderr)
        return 2
    predictor = RefSegPredictor.from_spec(args.checkpoint, device=_device(args.device), cache_size=0)
    results = evaluate_samples(predictor, samples, batch_size=args.batch_size, progress=not args.quiet)
    print(format_table(results, title=f"{args.data} [{args.split}] - model {predictor.version}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "split": args.split,
                                               "model": predictor.version, **results}, indent=2))
    return 0


def cmd_predict(args) -> int:
    from .imageio import load_image, save_mask
    from .predictor import RefSegPredictor

    image = load_image(args.image)
    predictor = RefSegPredictor.from_spec(args.checkpoint, device=_device(args.device), cache_size=1)
    [pred] = predictor.predict(image, [args.expression])
    save_mask(pred.mask, args.output)
    print(json.dumps({"mask": args.output, "score": round(pred.score, 4), "pixels": int(pred.mask.sum()),
                      "height": int(pred.mask.shape[0]), "width": int(pred.mask.shape[1]),
                      "model_version": predictor.version}))
    if args.overlay:
        save_overlay(image, pred.mask, args.overlay)
    return 0


def save_overlay(image, mask, path) -> None:
    import numpy as np
    from PIL import Image

    out = image.astype(np.float32).copy()
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255, 0, 80], dtype=np.float32)
    Image.fromarray(out.round().astype(np.uint8)).save(path)


def cmd_presets(args) -> int:
    from .build import PRESETS, preset_config

    for name in PRESETS:
        cfg = preset_config(name)
        src = cfg.encoder.pretrained or "random init (trained from scratch)"
        sam = cfg.sam.checkpoint or "random init"
        print(f"{name:32s} encoder={cfg.encoder.kind}:{src}  sam={sam}  input={cfg.sam.image_size}px")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refseg", description="Referring remote-sensing image segmentation")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a synthetic aerial-scene data set in the interchange layout")
    s.add_argument("out")
    s.add_argument("--images", type=int, default=1000)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--style", default="default", choices=["default", "shifted"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--expressions-per-image", type=int, default=3)
    s.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions of the images")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train or fine-tune (resumes if interrupted; torchrun for DDP)")
    t.add_argument("--data", required=True, help="DIR | rrsis-d:PATH | refsegrs:PATH | risbench:PATH | synth:STYLE")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--init", default="demo", help="demo | PRESET (fresh weights) | checkpoint dir (default demo)")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs over the data)")
    t.add_argument("--epochs", type=float, default=20.0)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of the steps")
    t.add_argument("--eval-every", type=int, default=None)
    t.add_argument("--max-val", type=int, default=400)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--curriculum", type=float, default=0.3, help="synth: fraction of steps to ramp difficulty")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--version", default=None, help="version string of the new checkpoint")
    t.add_argument("--half", action="store_true", help="store weights as float16")
    t.add_argument("--restart", action="store_true", help="ignore resume state and start over")
    t.add_argument("--plot", action="store_true", help="write OUT/training_curves.png")
    t.add_argument("--threads", type=int, default=None)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="gIoU, cIoU, Pr@0.5-0.9 on a data set split")
    e.add_argument("--data", required=True)
    e.add_argument("--checkpoint", default="demo")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--json", default=None, help="also write the figures as JSON")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("predict", help="segment what an expression refers to in one image")
    r.add_argument("image")
    r.add_argument("expression")
    r.add_argument("-o", "--output", required=True, help="mask PNG (255 = target)")
    r.add_argument("--checkpoint", default="demo")
    r.add_argument("--overlay", default=None, help="also write the image with the mask overlaid")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.set_defaults(func=cmd_predict)

    sub.add_parser("presets", help="list model presets").set_defaults(func=cmd_presets)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
