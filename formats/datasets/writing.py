"""What the layout writers (interchange, RefSegRS/RISBench, RRSIS-D) share.

* `IMAGE_EXTS`: the image files the layouts hold, in preference order when several files share an id.
* `copy_image`: an image copied byte for byte (so a GeoTIFF keeps its georeference), re-encoded as PNG only when
  its extension is not one of IMAGE_EXTS.
* `atomic_write`: a file replaced in one step (no half-written annotation file after a crash).
* `clean_expression`: an expression stripped and checked to fit on one line.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from formats.images import load_image

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")  # preference order when several files share an id


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def copy_image(src: Path, dst_stem: Path) -> Path:
    """Copy an image file byte for byte, keeping its extension when a reader finds it; otherwise write a PNG."""
    ext = src.suffix.lower()
    if ext in IMAGE_EXTS:
        dst = dst_stem.with_name(dst_stem.name + ext)
        shutil.copyfile(src, dst)
    else:
        dst = dst_stem.with_name(dst_stem.name + ".png")
        Image.fromarray(load_image(src)).save(dst)
    return dst


def clean_expression(expr: str, where: str) -> str:
    text = str(expr).strip()
    if not text:
        raise ValueError(f"{where}: empty expression")
    if "\n" in text or "\r" in text:
        raise ValueError(f"{where}: expression contains a line break, which this layout cannot store: {text!r}")
    return text
