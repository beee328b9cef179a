"""`refseg export` and `refseg tasks`: data sets and Label Studio projects in and out (the labelstudio/ and
formats/ layers; the model only for `refseg tasks --predict`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Tuple


def parse_fractions(text: str) -> Optional[Tuple[float, float, float]]:
    """--splits "0.8,0.1,0.1" -> fractions normalised to sum 1; None (after printing why) when malformed."""
    try:
        fractions = tuple(float(x) for x in text.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        print(f"error: --splits must be three non-negative fractions like 0.8,0.1,0.1, got {text!r}", file=sys.stderr)
        return None
    return tuple(f / sum(fractions) for f in fractions)


def cmd_export(args) -> int:
    if args.to == "scene":
        return _export_scene(args)
    if args.data.startswith(("ls-json:", "ls:")):
        return _export_label_studio(args)
    from formats.datasets.layouts import load_samples, write_samples

    samples = load_samples(args.data, args.split)
    if not samples:
        print(f"error: no samples in {args.data}" + (f" [{args.split}]" if args.split else ""), file=sys.stderr)
        return 2
    out = write_samples(samples, f"{args.to}:{args.out}")
    print(json.dumps({"samples": len(samples), "layout": args.to, "out": str(out)}))
    return 0


def _export_label_studio(args) -> int:
    from labelstudio.export import export_ls_json, export_ls_project

    kind, _, src = args.data.partition(":")
    fractions = parse_fractions(args.splits)
    if fractions is None:
        return 2
    common = dict(images_root=args.images_root, ls_url=args.ls_url, ls_token=args.ls_token, splits=fractions,
                  only_split=args.split)
    if kind == "ls-json":
        report = export_ls_json(src, args.out, args.to, label_config=args.label_config, **common)
    else:
        report = export_ls_project(src, args.out, args.to, **common)
    print(json.dumps(report.to_dict()))
    if not report.samples:
        print(f"error: no exportable annotated task in {args.data}", file=sys.stderr)
        return 2
    return 0


def _export_scene(args) -> int:
    from labelstudio.stitch import export_scene, summary

    report = export_scene(args.data, args.out, label_config=args.label_config, ls_url=args.ls_url,
                          ls_token=args.ls_token)
    print(json.dumps(summary(report)))
    gaps = report["chips_unannotated"] + report["chips_invalid"] + report["windows_without_task"]
    if gaps:
        print(f"warning: {gaps} chip window(s) without a usable annotation (not counted as background): see "
              f"{Path(args.out) / 'report.json'} and the *.unannotated.geojson footprints", file=sys.stderr)
    if not report["groups"]:
        print(f"error: no annotated scene chip in {args.data}", file=sys.stderr)
        return 2
    return 0


def cmd_tasks(args) -> int:
    from labelstudio.scene_tasks import image_url_for, load_label_config, read_expressions, write_scene_tasks

    expressions = read_expressions(args.expressions, args.expression or [])
    url, cfg = image_url_for(args.image_url_prefix, args.local_files_root), load_label_config(args.label_config)
    predict, version = None, ""
    if args.predict:
        from refseg_model.scene_predict import chip_predictor

        predict, version = chip_predictor(args.checkpoint, args.device, args.threads)
    print(json.dumps(write_scene_tasks(args.scenes, args.out, expressions, image_url=url, chip=args.chip,
                                       overlap=args.overlap, bands=args.bands, stretch=args.stretch,
                                       scene_id=args.scene_id, cfg=cfg, predict=predict, model_version=version)))
    return 0
