"""Annotated Label Studio tasks -> training samples: one definition, used by fine-tuning (workers/finetune.py)
and by `refseg export` (labelstudio/export.py).

Per task:
    annotation  the newest non-cancelled annotation with a result (ground-truth annotations first);
    mask        union of its regions of the BrushLabels (brush RLE) / PolygonLabels control, at the image's
                original size (`original_width/height` of the region; must match the image);
    expression  the annotation's TextArea text if any, else the task data's <Text value="$key"> value; with
                `allow_clicks_only` and a label config without Text/TextArea (SAM's click tool): "" for every task.
Tasks without such an annotation (not labelled, skipped, empty mask, no expression, image unreadable, mask
and image of different sizes) are skipped with the reason.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import numpy as np

from formats.image_source import ImageLoadError
from formats.images import load_image, save_mask

from .brush import rle_to_mask
from .labelconfig import ProjectConfig, textarea_text
from .polygons import polygon_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".jp2")

# fetch_image(url, task_id) -> the image's bytes (written unchanged) or an H x W x 3 uint8 array (written as PNG)
ImageFetcher = Callable[[str, object], Union[bytes, np.ndarray]]


class AnnotationError(ValueError):
    """An annotation's regions cannot be read (message names the region)."""


def pick_annotation(annotations: Sequence[dict]) -> Optional[dict]:
    """Newest usable annotation; ground-truth annotations win over newer ordinary ones."""
    usable = [a for a in annotations or [] if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result")]
    if not usable:
        return None
    return max(usable, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""), a.get("id") or 0))


def annotation_mask(cfg: ProjectConfig, results: Sequence[dict]) -> Optional[np.ndarray]:
    """Union of the regions of `cfg.from_name` (brush RLE or polygons), HxW bool; None if there are none.
    Raises AnnotationError if regions disagree on the image size or a region cannot be decoded."""
    mask = None
    for r in results or []:
        if not isinstance(r, dict) or r.get("from_name") != cfg.from_name:
            continue
        h, w = r.get("original_height"), r.get("original_width")
        value = r.get("value") or {}
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise AnnotationError(f"{r.get('type')} region {r.get('id')!r} has no original_width/original_height")
        try:
            if r.get("type") == "brushlabels" and value.get("rle"):
                part = rle_to_mask(value["rle"], h, w)
            elif r.get("type") == "polygonlabels" and value.get("points"):
                part = polygon_mask(value["points"], h, w)
            else:
                continue
        except (ValueError, TypeError) as exc:
            raise AnnotationError(f"{r.get('type')} region {r.get('id')!r}: {exc}") from None
        if mask is not None and mask.shape != part.shape:
            raise AnnotationError(f"regions of different sizes {mask.shape} and {part.shape}")
        mask = part if mask is None else mask | part
    return mask


def task_sample(cfg: ProjectConfig, task: dict,
                allow_clicks_only: bool = False) -> Tuple[Optional[Tuple[np.ndarray, str, dict]], str]:
    """((mask, expression, annotation), "") or (None, reason). `allow_clicks_only`: a config with no expression
    source (`has_expression_source`) gives every mask the expression "" (fine-tuning trains it with clicks)."""
    annotation = pick_annotation(task.get("annotations") or [])
    if annotation is None:
        return None, "no submitted (non-cancelled) annotation"
    results = annotation.get("result") or []
    try:
        mask = annotation_mask(cfg, results)
    except AnnotationError as exc:
        return None, str(exc)
    if mask is None:
        return None, f"annotation {annotation.get('id')} has no {cfg.from_name!r} region"
    if not mask.any():
        return None, f"annotation {annotation.get('id')}: empty mask"
    if allow_clicks_only and not has_expression_source(cfg):
        return (mask, "", annotation), ""
    expression = textarea_text(cfg, results)
    if not expression and cfg.text_key:
        value = (task.get("data") or {}).get(cfg.text_key)
        expression = value.strip() if isinstance(value, str) and value.strip() else None
    if not expression:
        return None, "no referring expression (TextArea text or task data)"
    return (mask, expression, annotation), ""


def has_expression_source(cfg: ProjectConfig) -> bool:
    """Whether the label config gives masks an expression (a TextArea, or a <Text value="$key">)."""
    return bool(cfg.text_key or cfg.textarea_name)


# what a skip reason says, in a few words (reasons carry ids and sizes; a summary counts them by kind)
_SKIP_KINDS = (("no submitted", "not annotated"), ("no referring expression", "no referring expression"),
               ("does not match the image", "mask size differs from the image"), (": empty mask", "empty mask"),
               (" region", "no brush region"))


def skip_summary(skipped: Iterable[dict]) -> str:
    """`write_task_samples`'s skipped list as counts by kind, most frequent first: "12 no referring expression,
    1 image unreadable" ("" when nothing was skipped). Why a fine-tune found too few samples, in one line."""
    counts: dict = {}
    for item in skipped:
        reason = str(item.get("reason", ""))
        kind = "image unreadable" if reason.startswith("image:") else next(
            (k for marker, k in _SKIP_KINDS if marker in reason), "brush result unreadable")
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def write_task_samples(tasks: Iterable[dict], cfg: ProjectConfig, fetch_image: ImageFetcher,
                       root, allow_clicks_only: bool = False) -> Tuple[List[dict], List[dict]]:
    """Write the samples of `tasks` as interchange files under `root` (images/task<ID>.<ext>, masks/task<ID>.png).

    Returns (records, skipped): records {"image", "mask", "expression", "task", "annotation"} (relative paths,
    no split yet: the caller assigns splits and writes annotations.jsonl), skipped {"task", "reason"}."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    records: List[dict] = []
    skipped: List[dict] = []
    for task in tasks:
        tid = task.get("id")
        sample, why = task_sample(cfg, task, allow_clicks_only)
        if sample is None:
            skipped.append({"task": tid, "reason": why})
            continue
        mask, expression, annotation = sample
        url = (task.get("data") or {}).get(cfg.image_key)
        try:
            image = fetch_image(url, tid)
            h, w = (image if isinstance(image, np.ndarray) else load_image(image)).shape[:2]
        except (ImageLoadError, OSError, ValueError, RuntimeError) as exc:
            skipped.append({"task": tid, "reason": f"image: {exc}"})
            continue
        if (h, w) != mask.shape:
            skipped.append({"task": tid, "reason": f"mask {mask.shape[1]}x{mask.shape[0]} does not match "
                                                   f"the image {w}x{h}"})
            continue
        name = f"task{tid}" if isinstance(tid, int) or str(tid).isalnum() else f"task{len(records):06d}"
        if isinstance(image, np.ndarray):
            from PIL import Image

            image_rel = f"images/{name}.png"
            Image.fromarray(image).save(root / image_rel)
        else:
            image_rel = f"images/{name}{image_suffix(image, url)}"
            (root / image_rel).write_bytes(image)
        save_mask(mask, root / "masks" / f"{name}.png")
        records.append({"image": image_rel, "mask": f"masks/{name}.png", "expression": expression, "task": tid,
                        "annotation": annotation.get("id")})
    return records, skipped


def image_suffix(data: bytes, url: str) -> str:
    """The file suffix for image bytes: from the decoded format, else the URL's, else .png."""
    from PIL import Image

    try:
        fmt = (Image.open(io.BytesIO(data)).format or "").lower()
    except Exception:
        fmt = ""
    known = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "webp": ".webp", "gif": ".gif",
             "jpeg2000": ".jp2"}
    if fmt in known:
        return known[fmt]
    suffix = Path(urlsplit(url).path).suffix.lower()
    return suffix if suffix in IMAGE_SUFFIXES else ".png"
