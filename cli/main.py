"""The `refseg` command line (over the model, refseg_model/, and the Label Studio layer, labelstudio/): synth,
train, eval, predict, export, presets.

    refseg synth OUT [--images N]
    refseg train --data DIR [--init demo|PRESET|CKPT] --out CKPT [--recipe rsrefseg2] [--plot]
    refseg eval --data DIR [--checkpoint CKPT] [--split test]
    refseg predict IMAGE "expression" -o mask.png|mask.tif [--checkpoint CKPT] [--overlay out.png]
                   [--bands 4,3,2] [--stretch auto|none|minmax|2,98] [--geojson out.geojson]
                   [--strategy whole|auto|tile|coarse|naive] [--tile 512] [--overlap 0.25] [--min-score 0.3]
    refseg export --data SRC --to rrsis-d|refsegrs|risbench|interchange OUT [--split train]
                  SRC also ls-json:FILE (Label Studio JSON export; --images-root DIR and/or --ls-url/--ls-token)
                  or ls:PROJECT_ID (Label Studio API; --ls-url/--ls-token or LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY)
    refseg export --data ls:PROJECT|ls-json:FILE --to scene OUT     (chips of `refseg tasks` -> GeoTIFF masks)
    refseg tasks SCENE.tif --expressions FILE|--expression TEXT --out DIR [--chip 1024] [--overlap 128]
                 [--local-files-root DIR | --image-url-prefix URL] [--bands 4,3,2] [--predict --checkpoint CKPT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from .data_commands import cmd_export, cmd_tasks, parse_fractions


def cmd_synth(args) -> int:
    from refseg_model.data.synth import write_dataset

    fractions = parse_fractions(args.splits)
    if fractions is None:
        return 2
    n = write_dataset(args.out, n_images=args.images, size=args.size, style=args.style, seed=args.seed,
                      expressions_per_image=args.expressions_per_image,
                      split_fractions=fractions)
    print(f"wrote {n} samples ({args.images} images, style {args.style}) to {args.out}")
    return 0


# `refseg train` flags that set a TrainConfig field a recipe may also set: field -> flag. Their parser default is
# None ("not given"), so that TrainConfig's defaults apply, a recipe's settings override those, and the flags the
# user gave override both.
TRAIN_SETTING_FLAGS = {
    "steps": "--steps", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "weight_decay": "--weight-decay", "warmup_frac": "--warmup", "eval_every": "--eval-every",
    "max_val": "--max-val", "augment": "--augment", "curriculum_frac": "--curriculum", "seed": "--seed",
    "interactive_frac": "--interactive-frac", "max_corrections": "--max-corrections", "decoder_lr": "--decoder-lr",
    "zoom_frac": "--zoom-frac", "select": "--select",
}
_TRAIN_ARG = {"warmup_frac": "warmup", "curriculum_frac": "curriculum"}  # field -> argparse dest, where they differ
# an explicit flag that makes recipe settings moot: --steps fixes the length (epochs unused), --eval-every the
# validation interval
_TRAIN_SUPERSEDES = {"steps": ("epochs",), "eval_every": ("eval_every_epochs",)}


def train_config_kwargs(args) -> dict:
    """TrainConfig keyword arguments from `refseg train`'s arguments, with `--recipe` applied (explicit flags
    win); prints the recipe's table on rank 0."""
    explicit = {f: v for f in TRAIN_SETTING_FLAGS if (v := getattr(args, _TRAIN_ARG.get(f, f))) is not None}
    common = dict(data=args.data, out=args.out, init=args.init, device=args.device, version=args.version,
                  half=args.half, resume=not args.restart, plot=args.plot, threads=args.threads)
    if not args.recipe:
        return {**common, **explicit}
    from refseg_model.recipes import apply_recipe, recipe_table, resolve_recipe

    recipe, why = resolve_recipe(args.recipe, args.data)
    kwargs, overridden = apply_recipe(recipe, explicit, _TRAIN_SUPERSEDES)
    if int(os.environ.get("RANK", 0)) == 0:
        flags = {**TRAIN_SETTING_FLAGS, "augment": "--augment" if explicit.get("augment") else "--no-augment"}
        remarks = ()
        if args.data.startswith("synth:"):
            remarks = ("synth data is endless: no epochs; the run is --steps long (default 10000) and validates on "
                       "generated scenes every --eval-every steps (default: 10 times)",)
        print(recipe_table(recipe, why, kwargs, overridden, flags, remarks), flush=True)
    return {**common, **kwargs}


def cmd_train(args) -> int:
    from formats.metrics import format_table
    from refseg_model.train import TrainConfig, train

    cfg = TrainConfig(**train_config_kwargs(args))
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
    from formats.datasets.layouts import load_samples
    from formats.metrics import format_table
    from refseg_model.evaluate import evaluate_samples
    from refseg_model.predictor import RefSegPredictor, resolve_device

    samples = load_samples(args.data, args.split)
    if args.limit:
        samples = samples[: args.limit]
    if not samples:
        print(f"error: no samples in split {args.split!r} of {args.data}", file=sys.stderr)
        return 2
    predictor = RefSegPredictor.from_spec(args.checkpoint, device=resolve_device(args.device), cache_size=0)
    results = evaluate_samples(predictor, samples, batch_size=args.batch_size, progress=not args.quiet)
    print(format_table(results, title=f"{args.data} [{args.split}] - model {predictor.version}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"data": args.data, "split": args.split,
                                               "model": predictor.version, **results}, indent=2))
    return 0


# scenes larger than this (longest side, px) go through refseg_model.large_scene unless --strategy whole
LARGE_SCENE_SIDE = 2048


def cmd_predict(args) -> int:
    from formats.image_source import is_tiff
    from formats.images import save_mask
    from formats.raster import load_raster
    from formats.raster_reader import RasterReader
    from formats.stretch import parse_bands, parse_stretch

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bands = parse_bands(args.bands)
    stretch = parse_stretch(args.stretch)
    out = Path(args.output)
    geotiff_out = out.suffix.lower() in (".tif", ".tiff")
    strategy = args.strategy
    if strategy is None:  # whole image through the model unless it is a large (Geo)TIFF
        strategy = "whole"
        if is_tiff(args.image):
            with RasterReader(args.image) as reader:
                if max(reader.shape) > LARGE_SCENE_SIDE:
                    strategy = "auto"
    from refseg_model.predictor import RefSegPredictor, resolve_device

    predictor = RefSegPredictor.from_spec(args.checkpoint, device=resolve_device(args.device), cache_size=1)
    info = {}
    if strategy == "whole":
        raster = load_raster(args.image, bands=bands, stretch=stretch)
        image, georef = raster.pixels, raster.georef
        [pred] = predictor.predict(image, [args.expression])
        mask, score = pred.mask, pred.score
        if raster.nodata_mask is not None:
            mask = mask & ~raster.nodata_mask
    else:
        from refseg_model.large_scene import predict_scene

        image = None
        res = predict_scene(predictor, args.image, args.expression, strategy=strategy, tile=args.tile,
                            overlap=args.overlap, bands=bands, stretch=stretch, min_score=args.min_score,
                            batch_size=args.batch_size)
        mask, score, georef = res.mask, res.score, res.georef
        info = {"windows": res.windows, "accepted_windows": res.accepted, "rois": [list(b) for b in res.rois],
                "seconds": round(res.seconds, 2)}
        strategy = res.strategy
    if geotiff_out:
        from formats.geotiff_writer import write_mask_geotiff

        write_mask_geotiff(mask, out, georef)
    else:
        save_mask(mask, out)
    report = {"mask": args.output, "score": round(score, 4), "pixels": int(mask.sum()),
              "height": int(mask.shape[0]), "width": int(mask.shape[1]), "model_version": predictor.version,
              "strategy": strategy, "crs": georef.crs if georef else None,
              "transform": list(georef.transform) if georef else None, **info}
    if args.geojson:
        from formats.mask_polygons import mask_to_geojson, write_geojson

        fc = mask_to_geojson(mask, georef, properties={"expression": args.expression, "score": round(score, 4)})
        write_geojson(fc, args.geojson)
        report["geojson"] = args.geojson
        report["polygons"] = len(fc["features"])
    print(json.dumps(report))
    if args.overlay:
        if image is None:
            print("warning: --overlay is skipped for large scenes (write the GeoTIFF mask and overlay it in a GIS)",
                  file=sys.stderr)
        else:
            save_overlay(image, mask, args.overlay)
    return 0


def save_overlay(image, mask, path) -> None:
    import numpy as np
    from PIL import Image

    out = image.astype(np.float32).copy()
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255, 0, 80], dtype=np.float32)
    Image.fromarray(out.round().astype(np.uint8)).save(path)


def cmd_presets(args) -> int:
    from refseg_model.build import PRESETS, describe_preset

    for name in PRESETS:
        print(f"{name:34s} {describe_preset(name)}")
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
    from refseg_model.recipes import recipe_names  # data only: no torch

    t.add_argument("--recipe", default=None, choices=recipe_names(),
                   help="a training recipe: sets the paper's optimiser, schedule, epochs, batch, augmentation, loss "
                        "weights and validation (rsrefseg2: RSRefSeg 2's configs, variant by --data) and prints "
                        "what it set; the flags below, when given, override it")
    # defaults None = not given: TrainConfig's defaults (the values in the help), or the recipe's, apply
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs over the data)")
    t.add_argument("--epochs", type=float, default=None, help="default 20")
    t.add_argument("--batch-size", type=int, default=None, help="per process; default 8")
    t.add_argument("--lr", type=float, default=None,
                   help="default 0.0003; 0 freezes what it applies to (with --decoder-lr: all but the decoder)")
    t.add_argument("--decoder-lr", type=float, default=None,
                   help="lr of SAM's prompt encoder and mask decoder (the click pathway); default --lr")
    t.add_argument("--weight-decay", type=float, default=None, help="default 0.05")
    t.add_argument("--warmup", type=float, default=None, help="warm-up fraction of the steps; default 0.05")
    t.add_argument("--eval-every", type=int, default=None, help="steps; default: about 10 validations per run")
    t.add_argument("--max-val", type=int, default=None, help="validation samples for selection; default 400")
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random flips with spatial words rewritten; default on")
    t.add_argument("--curriculum", type=float, default=None,
                   help="synth: fraction of steps to ramp difficulty; default 0.3")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--interactive-frac", type=float, default=None,
                   help="fraction of each batch trained with simulated clicks/boxes (initial prompt text, click, "
                        "box or text + click, then 1-3 corrective clicks); default 0")
    t.add_argument("--max-corrections", type=int, default=None,
                   help="with --interactive-frac: corrective clicks per interactive step, 1..N drawn per step; "
                        "default 3")
    t.add_argument("--zoom-frac", type=float, default=None,
                   help="chance that a sample whose target is small (<= 3/16 of the image side) trains as a zoomed "
                        "crop around it, from clicks or a box alone (what zoom-in clicks ask); single process "
                        "only; default 0")
    t.add_argument("--select", default=None, choices=["best", "last"],
                   help="checkpoint kept in OUT: best text-only validation gIoU (default) or the last one "
                        "(e.g. for click training, which text-only validation does not measure)")
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
    r.add_argument("-o", "--output", required=True,
                   help="mask: .png (255 = target), or .tif/.tiff for a GeoTIFF with the image's georeference")
    r.add_argument("--checkpoint", default="demo")
    r.add_argument("--overlay", default=None, help="also write the image with the mask overlaid")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--bands", default=None, help="1-based bands of a (Geo)TIFF for R,G,B, e.g. 4,3,2 (default 1,2,3)")
    r.add_argument("--stretch", default="auto",
                   help="auto (8-bit kept, else 2-98%% per band) | none | minmax | LOW,HIGH percentiles")
    r.add_argument("--geojson", default=None, help="also write the mask as GeoJSON polygons in the scene's CRS")
    r.add_argument("--strategy", default=None, choices=["whole", "auto", "tile", "coarse", "naive"],
                   help=f"large scenes (see refseg_model.large_scene); default: whole image, or auto for "
                        f"(Geo)TIFFs longer than {LARGE_SCENE_SIDE} px")
    r.add_argument("--tile", type=int, default=512, help="window side in full-resolution pixels")
    r.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    r.add_argument("--min-score", type=float, default=0.3, help="confidence a window needs to count")
    r.add_argument("--batch-size", type=int, default=8, help="windows per encoder batch")
    r.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    r.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="write a data set in another layout (RRSIS-D, RefSegRS, RISBench, interchange)")
    x.add_argument("--data", required=True,
                   help="DIR | rrsis-d:PATH | refsegrs:PATH | risbench:PATH | ls-json:FILE | ls:PROJECT_ID")
    x.add_argument("--to", required=True, choices=["rrsis-d", "refsegrs", "risbench", "interchange", "scene"],
                   help="a data-set layout, or scene: chips of `refseg tasks` stitched into GeoTIFF masks")
    x.add_argument("out", help="output folder")
    x.add_argument("--split", default=None, choices=["train", "val", "test"], help="only this split (default all)")
    x.add_argument("--images-root", default=None,
                   help="Label Studio sources: folder holding the task images (LS's LOCAL_FILES_DOCUMENT_ROOT)")
    x.add_argument("--ls-url", default=None, help="Label Studio sources: LS URL (default $LABEL_STUDIO_URL)")
    x.add_argument("--ls-token", default=None, help="Label Studio sources: API key (default $LABEL_STUDIO_API_KEY)")
    x.add_argument("--label-config", default=None,
                   help="ls-json: the project's label config (XML file or text; default: from LS, else inferred)")
    x.add_argument("--splits", default="1,0,0",
                   help="Label Studio sources: train,val,test fractions assigned per task (default all train)")
    x.set_defaults(func=cmd_export)

    k = sub.add_parser("tasks", help="cut (Geo)TIFF scenes into chips + a Label Studio import file, one task per "
                                     "(chip, expression), each with its georeference")
    k.add_argument("scenes", nargs="+", metavar="SCENE", help="(Geo)TIFF/COG scene(s)")
    k.add_argument("--out", required=True, help="folder for the chips (OUT/<scene id>/) and OUT/tasks.json")
    k.add_argument("--expressions", default=None, help="file with one referring expression per line")
    k.add_argument("--expression", action="append", help="a referring expression (repeatable)")
    k.add_argument("--chip", type=int, default=1024, help="chip side in px (default 1024)")
    k.add_argument("--overlap", type=int, default=128, help="px shared by neighbouring chips (default 128)")
    k.add_argument("--local-files-root", default=None,
                   help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default from the environment); OUT inside it")
    k.add_argument("--image-url-prefix", default=None, help="or: chips served at PREFIX/<path relative to OUT>")
    k.add_argument("--bands", default=None, help="as refseg predict: 1-based bands for R,G,B, e.g. 4,3,2")
    k.add_argument("--stretch", default="auto", help="as refseg predict: auto | none | minmax | LOW,HIGH")
    k.add_argument("--scene-id", default=None, help="the scene's id in task data (default: the file name stem)")
    k.add_argument("--label-config", default=None, help="the project's label config (XML file or text): data "
                                                        "keys and pre-annotation names (default: the README's)")
    k.add_argument("--predict", action="store_true", help="add the model's masks as pre-annotations")
    k.add_argument("--checkpoint", default="demo", help="with --predict: demo | preset:NAME | checkpoint dir")
    k.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    k.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    k.set_defaults(func=cmd_tasks)

    sub.add_parser("presets", help="list model presets").set_defaults(func=cmd_presets)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, KeyError) as exc:  # FileNotFoundError, PermissionError, bad values
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
