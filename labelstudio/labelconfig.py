"""What the backend needs from a project's label config, parsed with label-studio-sdk's `LabelInterface`.

    <Image name="image" value="$image"/>                         -> where the image URL is in task data
    <Text name="expr" value="$expression"/>                       -> expression for batch pre-annotation
    <TextArea name="prompt" toName="image" .../>                  -> expression typed in the editor (interactive)
    <BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>   (or PolygonLabels)
    <KeyPointLabels name="click" toName="image" smart="true">...   -> clicks (interactive; alt-click = negative)
    <RectangleLabels name="box" toName="image" smart="true">...    -> a box around the object (interactive)

With a smart KeyPointLabels / RectangleLabels, a config needs no expression at all (clicks only, as a SAM click
tool); with Text/TextArea as well, the expression and the clicks go to the model together.

A config we cannot serve raises `LabelConfigError` with a message meant for the person setting up the project.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

# imported here, not on first use: the import takes ~0.5 s (seconds on a busy machine) and LS gives /setup 3 s
from label_studio_sdk.label_interface import LabelInterface

OUTPUT_TAGS = {"BrushLabels": "brush", "PolygonLabels": "polygon"}  # in order of preference
SMART_TAGS = ("KeyPointLabels", "RectangleLabels")  # click / box tools, used when smart="true"


class LabelConfigError(ValueError):
    """The label config cannot be served by this backend."""


@dataclass(frozen=True)
class ProjectConfig:
    image_name: str  # <Image name=...>, the regions' to_name
    image_key: str  # task.data key holding the image URL
    output: str  # "brush" | "polygon"
    from_name: str  # name of the BrushLabels / PolygonLabels control
    label: str  # the label value put on predicted regions (the control's first <Label>)
    text_key: Optional[str] = None  # task.data key of the expression (<Text value="$key">)
    textarea_name: Optional[str] = None  # <TextArea name=...> whose submitted text is the expression
    keypoint_name: Optional[str] = None  # <KeyPointLabels smart="true" name=...> on the image: clicks
    keypoint_labels: Tuple[str, ...] = ()  # its <Label> values
    rectangle_name: Optional[str] = None  # <RectangleLabels smart="true" name=...> on the image: a box
    rectangle_labels: Tuple[str, ...] = ()

    @property
    def has_smart_tools(self) -> bool:
        return bool(self.keypoint_name or self.rectangle_name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProjectConfig":
        d = dict(d)
        for k in ("keypoint_labels", "rectangle_labels"):
            d[k] = tuple(d.get(k) or ())
        return cls(**d)


def _data_key(value: Optional[str]) -> Optional[str]:
    if value and value.startswith("$") and len(value) > 1:
        return value[1:]
    return None


def parse_label_config(xml: str) -> ProjectConfig:
    if not isinstance(xml, str):  # e.g. a JSON list or object in the request: not cacheable, not a config
        raise LabelConfigError(f"the label config must be an XML string, not {type(xml).__name__}")
    return _parse_label_config(xml)


@functools.lru_cache(maxsize=64)
def _parse_label_config(xml: str) -> ProjectConfig:
    if not xml.strip():
        raise LabelConfigError("the project has no label config")
    try:
        li = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several unrelated types for bad XML
        raise LabelConfigError(f"cannot parse the label config: {exc}") from None

    images = {o.name: o for o in li.objects if o.tag.lower() == "image"}
    if not images:
        raise LabelConfigError("the label config has no <Image> tag")

    control = None
    for tag in OUTPUT_TAGS:
        for c in li.controls:
            if c.tag == tag and any(t in images for t in (c.to_name or [])):
                control = c
                break
        if control is not None:
            break
    if control is None:
        raise LabelConfigError(
            "the label config needs a <BrushLabels> (or <PolygonLabels>) control whose toName is an <Image>; "
            f"found controls: {', '.join(sorted({c.tag for c in li.controls})) or 'none'}"
        )
    image = images[next(t for t in control.to_name if t in images)]
    image_key = _data_key(image.value)
    if image_key is None:
        raise LabelConfigError(f'<Image name="{image.name}"> must take its URL from task data (value="$key")')
    labels = list(control.labels or [])
    if not labels:
        raise LabelConfigError(f'<{control.tag} name="{control.name}"> has no <Label> children')

    text_key = next((_data_key(o.value) for o in li.objects if o.tag.lower() == "text" and _data_key(o.value)), None)
    textareas = [c for c in li.controls if c.tag == "TextArea"]
    textarea = next((c for c in textareas if image.name in (c.to_name or [])), textareas[0] if textareas else None)
    smart = {}
    for tag in SMART_TAGS:
        for c in li.controls:
            if c.tag == tag and image.name in (c.to_name or []) and _is_smart(c):
                smart[tag] = c
                break
    if text_key is None and textarea is None and not smart:
        raise LabelConfigError(
            "the label config gives no referring expression: add <Text value=\"$expression\"/> (expression in task "
            "data, for pre-annotation) and/or a <TextArea toName=\"image\"/> (expression typed in the editor), "
            "or a click tool (<KeyPointLabels smart=\"true\">, <RectangleLabels smart=\"true\">)"
        )
    kp, rect = smart.get("KeyPointLabels"), smart.get("RectangleLabels")
    return ProjectConfig(
        image_name=image.name,
        image_key=image_key,
        output=OUTPUT_TAGS[control.tag],
        from_name=control.name,
        label=str(labels[0]),
        text_key=text_key,
        textarea_name=textarea.name if textarea is not None else None,
        keypoint_name=kp.name if kp is not None else None,
        keypoint_labels=tuple(str(v) for v in (kp.labels or [])) if kp is not None else (),
        rectangle_name=rect.name if rect is not None else None,
        rectangle_labels=tuple(str(v) for v in (rect.labels or [])) if rect is not None else (),
    )


def _is_smart(control) -> bool:
    """smart="true" (or smartOnly="true"): Label Studio sends the control's regions to the backend."""
    attr = getattr(control, "attr", None) or {}
    return any(str(attr.get(k, "")).lower() == "true" for k in ("smart", "smartOnly", "smartonly"))


def task_expression(cfg: ProjectConfig, task: dict, context: Optional[dict] = None) -> Optional[str]:
    """The expression of a task: the TextArea text from an interactive `context` (or an annotation's result
    list), else the task data's <Text> value."""
    results = (context or {}).get("result") if isinstance(context, dict) else None
    text = textarea_text(cfg, results or [])
    if text:
        return text
    data = task.get("data") if isinstance(task, dict) else None
    if cfg.text_key and isinstance(data, dict):
        value = data.get(cfg.text_key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def textarea_text(cfg: ProjectConfig, results: list) -> Optional[str]:
    """First non-empty text of a `textarea` item in a result list; items of our TextArea come first."""
    if not isinstance(results, list):  # request JSON of any shape: only a list of result items counts
        return None
    items = [r for r in results if isinstance(r, dict) and r.get("type") == "textarea"]
    items.sort(key=lambda r: r.get("from_name") != cfg.textarea_name)
    for item in items:
        value = item.get("value")
        texts = value.get("text") if isinstance(value, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list):
            continue
        for t in texts:
            if isinstance(t, str) and t.strip():
                return t.strip()
    return None
