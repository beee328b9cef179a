"""The RefSegRS and RISBench layouts (the same layout under different folder names): reader and writer.

    ROOT/images/<id>.tif        (RISBench: ROOT/img_rgb/)   .tif/.tiff/.png/.jpg/.jpeg, found by id
    ROOT/masks/<id>.tif         (RISBench: ROOT/mask/)      0/1 or 0/255: any non-zero pixel is target
    ROOT/output_phrase_{train,val,test}.txt                 lines "<image_id> <expression...>"

See docs/model.md sections 1.7 and 7.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from formats.datasets.sample import SPLITS, DatasetFormatError, PathLike, Sample, check_split
from formats.datasets.sample_mask import load_sample_mask
from formats.datasets.writing import IMAGE_EXTS, atomic_write, clean_expression, copy_image
from formats.images import save_mask

PHRASE_FILE = "output_phrase_{split}.txt"
LAYOUT_DIRS = {"refsegrs": ("images", "masks"), "risbench": ("img_rgb", "mask")}


def _find_dir(root: Path, names: Sequence[str], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetFormatError(f"{root}: no {what} folder (looked for {', '.join(n + '/' for n in names)})")


def _index_files(folder: Path) -> Dict[str, Path]:
    """Map file name and stem -> path for the image-like files of a folder (stems by IMAGE_EXTS preference)."""
    by_name: Dict[str, Path] = {}
    by_stem: Dict[str, Tuple[int, Path]] = {}
    for entry in os.scandir(folder):
        ext = os.path.splitext(entry.name)[1].lower()
        if ext not in IMAGE_EXTS or not entry.is_file():
            continue
        path = folder / entry.name
        by_name[entry.name] = path
        stem, rank = os.path.splitext(entry.name)[0], IMAGE_EXTS.index(ext)
        if stem not in by_stem or rank < by_stem[stem][0]:
            by_stem[stem] = (rank, path)
    index = {stem: p for stem, (_, p) in by_stem.items()}
    index.update(by_name)  # an id that already carries its extension wins
    return index


def read_refsegrs(root: PathLike, split: Optional[str] = None) -> List[Sample]:
    """Read a RefSegRS or RISBench tree (folder names auto-detected: images|img_rgb, masks|mask).

    Args:
        root: the data set folder holding output_phrase_{train,val,test}.txt.
        split: "train", "val" or "test"; None reads every split file present (in that order).

    Returns:
        One Sample per expression line, in file order; mask paths are plain mask files.
    """
    check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a directory")
    splits = [split] if split is not None else [s for s in SPLITS if (root / PHRASE_FILE.format(split=s)).is_file()]
    if split is not None and not (root / PHRASE_FILE.format(split=split)).is_file():
        raise DatasetFormatError(f"{root / PHRASE_FILE.format(split=split)} not found")
    if not splits:
        raise DatasetFormatError(f"{root}: no output_phrase_{{train,val,test}}.txt: not a RefSegRS/RISBench layout")
    images = _index_files(_find_dir(root, ("images", "img_rgb"), "image"))
    masks = _index_files(_find_dir(root, ("masks", "mask"), "mask"))
    samples: List[Sample] = []
    for sp in splits:
        phrases = root / PHRASE_FILE.format(split=sp)
        with phrases.open(encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.strip().split(None, 1)
                if len(parts) < 2:
                    raise DatasetFormatError(f"{phrases}:{lineno}: expected '<image_id> <expression>', got {line!r}")
                image_id, expr = parts[0], parts[1].strip()
                if image_id not in images:
                    raise DatasetFormatError(f"{phrases}:{lineno}: no image file for id {image_id!r} "
                                             f"(extensions {', '.join(IMAGE_EXTS)})")
                if image_id not in masks:
                    raise DatasetFormatError(f"{phrases}:{lineno}: no mask file for id {image_id!r}")
                samples.append(Sample(images[image_id], masks[image_id], expr, sp))
    return samples


def write_refsegrs(samples: Iterable[Sample], out_root: PathLike, layout: str = "refsegrs") -> Path:
    """Write samples as a RefSegRS (layout="refsegrs") or RISBench (layout="risbench") tree.

    Each distinct (image, mask) pair gets an id 0, 1, ...; images are copied byte for byte (keeping the extension
    when it is one of IMAGE_EXTS, else re-encoded as PNG); masks are written as 8-bit 0/255 TIFF, masks/<id>.tif.
    All three output_phrase files are written (empty for absent splits). Expressions are stripped and must not
    contain line breaks. Returns out_root.
    """
    if layout not in LAYOUT_DIRS:
        raise ValueError(f"layout must be one of {sorted(LAYOUT_DIRS)}, got {layout!r}")
    out_root = Path(out_root)
    img_dir, mask_dir = (out_root / d for d in LAYOUT_DIRS[layout])
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    ids: Dict[Tuple[str, str], str] = {}
    lines: Dict[str, List[str]] = {s: [] for s in SPLITS}
    cache: Dict[str, Any] = {}
    for k, s in enumerate(samples):
        if s.split not in SPLITS:
            raise ValueError(f"sample {k}: split {s.split!r} is not one of {SPLITS}")
        expr = clean_expression(s.expression, f"sample {k}")
        key = (str(s.image), str(s.mask))
        if key not in ids:
            sid = str(len(ids))
            copy_image(Path(s.image), img_dir / sid)
            save_mask(load_sample_mask(s, cache), mask_dir / f"{sid}.tif")
            ids[key] = sid
        lines[s.split].append(f"{ids[key]} {expr}\n")
    for sp, ls in lines.items():
        atomic_write(out_root / PHRASE_FILE.format(split=sp), "".join(ls).encode("utf-8"))
    return out_root
