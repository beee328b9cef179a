"""Clicks and boxes from an interactive request's `params.context.result` (Label Studio's smart tools).

Label Studio sends every smart region of the annotation being edited, in creation order
(shared/docs/labelstudio.md §1.3 / interactive annotation):

    {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": true,
     "original_width": W, "original_height": H,
     "value": {"x": 12.5, "y": 40.0, "width": 0.6, "keypointlabels": ["target"]}}
    {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": W, "original_height": H,
     "value": {"x": 10, "y": 20, "width": 30, "height": 15, "rotation": 0, "rectanglelabels": ["target"]}}

x, y, width, height are percent (0-100) of the original image; `is_positive` is false for an alt-click
(a negative point). `parse_prompts` turns them into pixels of the original image: points [(x, y, positive)] in
the order given, and at most one box (the last rectangle drawn: the answer is one object). Items of other types
(textarea, brush, ...) are left to the expression / ignored. A context that cannot be right raises PromptError
(the web process answers 400 with its message): coordinates outside 0-100, no `value`, a label the control does
not have, more than MAX_POINTS clicks, no image size. Regions of other controls (a KeyPointLabels that is not
the config's smart one, or any when the config has no smart tool) are not prompts and are ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .labelconfig import ProjectConfig

MAX_POINTS = 100
KEYPOINT, RECTANGLE = "keypointlabels", "rectanglelabels"
_EPS = 1e-6


class PromptError(ValueError):
    """The interactive context's clicks or boxes cannot be used."""


@dataclass(frozen=True)
class Prompts:
    points: Tuple[Tuple[float, float, bool], ...] = ()  # (x, y, positive), original image pixels
    box: Optional[Tuple[float, float, float, float]] = None  # (x0, y0, x1, y1), original image pixels
    image_size: Optional[Tuple[int, int]] = None  # (width, height) the pixels refer to (LS's original_*)
    labels: Tuple[str, ...] = field(default=())  # label values seen on the smart regions

    def __bool__(self) -> bool:
        return bool(self.points) or self.box is not None

    def to_json(self) -> dict:
        """The job payload's form (JSON lists)."""
        return {"points": [list(p) for p in self.points], "box": list(self.box) if self.box else None,
                "image_size": list(self.image_size) if self.image_size else None}


def prompts_from_json(d: Optional[dict]) -> Prompts:
    """Inverse of Prompts.to_json (for the worker); None/{} -> no prompts."""
    if not d:
        return Prompts()
    points = tuple((float(x), float(y), bool(p)) for x, y, p in d.get("points") or [])
    box = tuple(float(v) for v in d["box"]) if d.get("box") else None
    size = tuple(int(v) for v in d["image_size"]) if d.get("image_size") else None
    return Prompts(points, box, size)  # type: ignore[arg-type]


def rescale(prompts: Prompts, width: int, height: int) -> Prompts:
    """The same prompts for an image of width x height (the worker's decoded image), if LS's size differs."""
    if not prompts.image_size or tuple(prompts.image_size) == (width, height):
        return prompts
    sx, sy = width / prompts.image_size[0], height / prompts.image_size[1]
    points = tuple((x * sx, y * sy, p) for x, y, p in prompts.points)
    box = None if prompts.box is None else (prompts.box[0] * sx, prompts.box[1] * sy, prompts.box[2] * sx,
                                            prompts.box[3] * sy)
    return Prompts(points, box, (width, height), prompts.labels)


def _number(value, what: str, i: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise PromptError(f"context.result[{i}]: {what} must be a number, got {value!r}")
    return float(value)


def _percent(value, what: str, i: int) -> float:
    v = _number(value, what, i)
    if not -_EPS <= v <= 100 + _EPS:
        raise PromptError(f"context.result[{i}]: {what} = {v:g} is outside 0-100 (percent of the image)")
    return min(max(v, 0.0), 100.0)


def _size(item: dict, i: int) -> Tuple[int, int]:
    w, h = item.get("original_width"), item.get("original_height")
    for name, v in (("original_width", w), ("original_height", h)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or v <= 0:
            raise PromptError(f"context.result[{i}]: {name} must be a positive number of pixels, got {v!r}")
    return int(round(float(w))), int(round(float(h)))


def _labels(value: dict, key: str, allowed: Tuple[str, ...], control: str, i: int) -> Tuple[str, ...]:
    labels = value.get(key)
    if labels is None:
        return ()
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise PromptError(f"context.result[{i}]: value.{key} must be a list of label names")
    unknown = [v for v in labels if v not in allowed]
    if unknown:
        raise PromptError(f"context.result[{i}]: unknown label {unknown[0]!r} for {control!r} "
                          f"(its labels: {', '.join(allowed) or 'none'})")
    return tuple(labels)


def parse_prompts(cfg: ProjectConfig, context) -> Prompts:
    """Clicks and the box of an interactive `context` ({"result": [...]}) in original image pixels."""
    results = context.get("result") if isinstance(context, dict) else None
    if not isinstance(results, list):
        return Prompts()
    points: List[Tuple[float, float, bool]] = []
    box = None
    size: Optional[Tuple[int, int]] = None
    seen: List[str] = []
    for i, item in enumerate(results):
        if not isinstance(item, dict):
            continue
        kind = str(item.get("type") or "").lower()
        if kind not in (KEYPOINT, RECTANGLE):
            continue
        control = cfg.keypoint_name if kind == KEYPOINT else cfg.rectangle_name
        from_name = item.get("from_name")
        if control is None or (from_name is not None and from_name != control):
            continue  # not our click/box tool (none in the config, or another control's region)
        value = item.get("value")
        if not isinstance(value, dict):
            raise PromptError(f"context.result[{i}]: a {kind} region without a 'value' object")
        allowed = cfg.keypoint_labels if kind == KEYPOINT else cfg.rectangle_labels
        seen.extend(_labels(value, kind, allowed, control, i))
        w, h = _size(item, i)
        if size is not None and size != (w, h):
            raise PromptError(f"context.result[{i}]: original size {w}x{h} differs from an earlier region's "
                              f"{size[0]}x{size[1]}")
        size = (w, h)
        x, y = _percent(value.get("x"), "value.x", i), _percent(value.get("y"), "value.y", i)
        if kind == KEYPOINT:
            positive = item.get("is_positive", True)
            if not isinstance(positive, bool):
                raise PromptError(f"context.result[{i}]: is_positive must be true or false, got {positive!r}")
            points.append((x / 100 * w, y / 100 * h, positive))
            if len(points) > MAX_POINTS:
                raise PromptError(f"more than {MAX_POINTS} clicks in one request")
        else:
            if _number(value.get("rotation", 0) or 0, "value.rotation", i) % 360:
                raise PromptError(f"context.result[{i}]: rotated rectangles are not supported")
            bw, bh = _percent(value.get("width"), "value.width", i), _percent(value.get("height"), "value.height", i)
            if x + bw > 100 + 1e-3 or y + bh > 100 + 1e-3:
                raise PromptError(f"context.result[{i}]: the rectangle reaches outside the image "
                                  f"(x + width = {x + bw:g}, y + height = {y + bh:g})")
            box = (x / 100 * w, y / 100 * h, min(x + bw, 100) / 100 * w, min(y + bh, 100) / 100 * h)
    return Prompts(tuple(points), box, size, tuple(seen))
