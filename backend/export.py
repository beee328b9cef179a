"""A Label Studio project as a training data set: `refseg export --data ls-json:FILE|ls:PROJECT --to LAYOUT OUT`.

Sources
    ls-json:FILE   a Label Studio JSON export (Export -> JSON: a list of tasks, each with `data` and `annotations`)
    ls:PROJECT     the project read through the REST API (LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, or arguments)

Per task, the sample is what fine-tuning uses too (see workers/finetune.py):
    annotation  the newest non-cancelled annotation with a result (ground-truth annotations first);
    mask        union of its regions of the BrushLabels (brush RLE) / PolygonLabels control, at the image's
                original size (`original_width/height` of the region; must match the image);
    expression  the annotation's TextArea text if any, else the task data's <Text value="$key"> value.
Tasks without such an annotation (not labelled, skipped, empty mask, no expression, image unreadable) are
skipped and listed in the report with the reason.

Images are resolved like the workers do (workers/media.py): `/data/local-files/?d=PATH` from `images_root`
(LS's LOCAL_FILES_DOCUMENT_ROOT) if given, else downloaded from Label Studio with the API key; LS uploads and
cloud URLs through Label Studio; plain http(s) URLs directly. Without a Label Studio URL, `images_root` is
searched for the file (`?d=` path, path after /data/, or the bare file name). Image bytes are copied unchanged.

The interchange layout is written directly (images/task<ID>.<ext>, masks/task<ID>.png, annotations.jsonl);
the other layouts (rrsis-d, refsegrs, risbench) are written from a temporary interchange copy by
refseg_model.data.public.write_samples.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from .brush import rle_to_mask
from .labelconfig import LabelConfigError, ProjectConfig, parse_label_config, textarea_text

log = logging.getLogger(__name__)

LAYOUTS = ("interchange", "rrsis-d", "refsegrs", "risbench")
SPLITS = ("train", "val", "test")
_TEXT_KEYS = ("expression", "referring_expression", "sentence", "text", "caption", "prompt", "ref")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".jp2")


class ExportError(ValueError):
    """The source cannot be exported (message meant for the user)."""


@dataclass
class ExportReport:
    out: str
    layout: str
    tasks: int = 0
    samples: int = 0
    splits: Dict[str, int] = field(default_factory=dict)
    skipped: List[dict] = field(default_factory=list)  # {"task": id, "reason": ...}

    def to_dict(self) -> dict:
        return {"samples": self.samples, "tasks": self.tasks, "layout": self.layout, "out": self.out,
                "splits": self.splits, "skipped": len(self.skipped), "skipped_tasks": self.skipped[:50]}


# ------------------------------------------------------------------------------------------- one task -> sample
def pick_annotation(annotations: Sequence[dict]) -> Optional[dict]:
    """Newest usable annotation; ground-truth annotations win over newer ordinary ones."""
    usable = [a for a in annotations or [] if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result")]
    if not usable:
        return None
    return max(usable, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""), a.get("id") or 0))


def polygon_mask(points, h: int, w: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("1", (w, h), 0)
    ImageDraw.Draw(img).polygon([(float(x) / 100.0 * w, float(y) / 100.0 * h) for x, y in points], fill=1)
    return np.asarray(img, dtype=bool)


def annotation_mask(cfg: ProjectConfig, results: Sequence[dict]) -> Optional[np.ndarray]:
    """Union of the regions of `cfg.from_name` (brush RLE or polygons), HxW bool; None if there are none.
    Raises ExportError if regions disagree on the image size or a region cannot be decoded."""
    mask = None
    for r in results or []:
        if not isinstance(r, dict) or r.get("from_name") != cfg.from_name:
            continue
        h, w = r.get("original_height"), r.get("original_width")
        value = r.get("value") or {}
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise ExportError(f"{r.get('type')} region {r.get('id')!r} has no original_width/original_height")
        try:
            if r.get("type") == "brushlabels" and value.get("rle"):
                part = rle_to_mask(value["rle"], h, w)
            elif r.get("type") == "polygonlabels" and value.get("points"):
                part = polygon_mask(value["points"], h, w)
            else:
                continue
        except (ValueError, TypeError) as exc:
            raise ExportError(f"{r.get('type')} region {r.get('id')!r}: {exc}") from None
        if mask is not None and mask.shape != part.shape:
            raise ExportError(f"regions of different sizes {mask.shape} and {part.shape}")
        mask = part if mask is None else mask | part
    return mask


def task_sample(cfg: ProjectConfig, task: dict) -> Tuple[Optional[Tuple[np.ndarray, str, dict]], str]:
    """((mask, expression, annotation), "") or (None, reason)."""
    annotation = pick_annotation(task.get("annotations") or [])
    if annotation is None:
        return None, "no submitted (non-cancelled) annotation"
    results = annotation.get("result") or []
    try:
        mask = annotation_mask(cfg, results)
    except ExportError as exc:
        return None, str(exc)
    if mask is None:
        return None, f"annotation {annotation.get('id')} has no {cfg.from_name!r} region"
    if not mask.any():
        return None, f"annotation {annotation.get('id')}: empty mask"
    expression = textarea_text(cfg, results)
    if not expression and cfg.text_key:
        value = (task.get("data") or {}).get(cfg.text_key)
        expression = value.strip() if isinstance(value, str) and value.strip() else None
    if not expression:
        return None, "no referring expression (TextArea text or task data)"
    return (mask, expression, annotation), ""


# ------------------------------------------------------------------------------------------------- config
def infer_config(tasks: Sequence[dict]) -> ProjectConfig:
    """A ProjectConfig guessed from the annotations of a JSON export (used when no label config is available):
    the control and image names from the brush/polygon regions, the image URL under the data key named like the
    image (else the only image-like value), the expression under the only other text key (else a usual name)."""
    regions = Counter()
    labels: Dict[Tuple[str, str], str] = {}
    textareas = Counter()
    for t in tasks:
        for a in t.get("annotations") or []:
            for r in (a or {}).get("result") or []:
                if not isinstance(r, dict):
                    continue
                if r.get("type") in ("brushlabels", "polygonlabels"):
                    key = (r.get("type"), r.get("from_name"), r.get("to_name"))
                    regions[key] += 1
                    vals = (r.get("value") or {}).get(r["type"]) or []
                    if vals:
                        labels.setdefault(key[1:], str(vals[0]))
                elif r.get("type") == "textarea":
                    textareas[r.get("from_name")] += 1
    if not regions:
        raise ExportError("no brushlabels/polygonlabels regions in any annotation: nothing to export "
                          "(or pass the project's label config)")
    (kind, from_name, to_name), _ = regions.most_common(1)[0]
    data = next((t.get("data") for t in tasks if isinstance(t.get("data"), dict)), {}) or {}
    strings = {k: v for k, v in data.items() if isinstance(v, str)}
    if to_name in strings:
        image_key = to_name
    else:
        imgs = [k for k, v in strings.items() if _looks_like_image(v)]
        if len(imgs) != 1:
            raise ExportError(f"cannot tell which task data key holds the image (candidates: {imgs or list(strings)}); "
                              "pass the project's label config")
        image_key = imgs[0]
    others = [k for k in strings if k != image_key and not _looks_like_image(strings[k])]
    text_key = others[0] if len(others) == 1 else next((k for k in _TEXT_KEYS if k in others), None)
    textarea = textareas.most_common(1)[0][0] if textareas else None
    if text_key is None and textarea is None:
        raise ExportError(f"cannot tell which task data key holds the expression (candidates: {others}); "
                          "pass the project's label config")
    return ProjectConfig(image_name=to_name, image_key=image_key, output="brush" if kind == "brushlabels" else "polygon",
                         from_name=from_name, label=labels.get((from_name, to_name), ""), text_key=text_key,
                         textarea_name=textarea)


def _looks_like_image(value: str) -> bool:
    v = value.strip().lower()
    path = urlsplit(v).path
    return (v.startswith(("/data/", "upload/", "s3://", "gs://", "azure-blob://", "data:image/"))
            or path.endswith(_IMAGE_SUFFIXES) or any(unquote(x).endswith(_IMAGE_SUFFIXES)
                                                     for x in parse_qs(urlsplit(v).query).get("d", [])))


# ------------------------------------------------------------------------------------------------- images
class ImageResolver:
    """bytes of a task image: through workers.media.MediaFetcher when Label Studio is reachable (or for
    /data/local-files paths with `images_root`), else by looking the file up under `images_root`."""

    def __init__(self, images_root: Optional[str] = None, ls_url: str = "", ls_token: str = "",
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.root = Path(images_root).resolve() if images_root else None
        self.ls_url = (ls_url or "").rstrip("/")
        self._fetcher = None
        if self.ls_url or self.root is not None:
            from backend.settings import Settings
            from workers.lsclient import LabelStudioClient
            from workers.media import MediaFetcher

            # the user exports their own project: hosts named in its task URLs may be private (no SSRF concern)
            s = Settings(label_studio_url=self.ls_url, label_studio_api_key=ls_token or "",
                         local_files_document_root=str(self.root) if self.root else "",
                         media_allowed_hosts=tuple(sorted({h.lower() for h in allowed_hosts if h})))
            self.ls = LabelStudioClient(self.ls_url, ls_token or "")
            self._fetcher = MediaFetcher(s, self.ls)

    def __call__(self, url: str, task_id=None) -> bytes:
        if not isinstance(url, str) or not url.strip():
            raise ExportError("no image URL")
        url = url.strip()
        errors = []
        if self._fetcher is not None and (self.ls_url or url.startswith(("/data/local-files", "data:"))):
            try:
                return self._fetcher.fetch(url, task_id)
            except Exception as exc:  # MediaError, LabelStudioError, OSError
                errors.append(str(exc))
        if self.root is not None:
            for cand in self._candidates(url):
                if cand.is_file():
                    return cand.read_bytes()
            errors.append(f"not found under {self.root}")
        if not errors:
            errors.append("give --images-root (the folder holding the images) or --ls-url/--ls-token")
        raise ExportError(f"{_short(url)}: " + "; ".join(errors))

    def _candidates(self, url: str) -> List[Path]:
        parts = urlsplit(url)
        rels = []
        d = parse_qs(parts.query).get("d")
        if d:
            rels.append(unquote(d[0]))
        path = unquote(parts.path)
        if path.startswith("/data/"):
            rels.append(path[len("/data/"):])
        if parts.path:
            rels.append(path.lstrip("/"))
            rels.append(Path(path).name)
        out = []
        for rel in rels:
            cand = (self.root / rel).resolve()
            if (cand == self.root or self.root in cand.parents) and cand not in out:
                out.append(cand)
        return out


def _short(url: str, n: int = 100) -> str:
    return url if len(url) <= n else url[: n - 3] + "..."


def _image_suffix(data: bytes, url: str) -> str:
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
    return suffix if suffix in _IMAGE_SUFFIXES else ".png"


# ---------------------------------------------------------------------------------------------------- export
def assign_splits(task_ids: Sequence, fractions: Sequence[float], seed: int = 0) -> Dict[object, str]:
    """Deterministic split per task id (same ids and fractions -> same assignment)."""
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ExportError(f"split fractions must be three non-negative numbers, got {list(fractions)}")
    f = f / f.sum()
    ids = sorted(task_ids, key=lambda t: (str(type(t)), t))
    n = len(ids)
    counts = np.floor(f * n).astype(int)
    order = np.argsort(-(f * n - counts))
    for k in range(n - counts.sum()):
        counts[order[k % 3]] += 1
    names = [s for s, c in zip(SPLITS, counts) for _ in range(c)]
    random.Random(f"refseg-export-{seed}").shuffle(ids)
    return dict(zip(ids, names))


def export_tasks(tasks: Iterable[dict], cfg: ProjectConfig, resolve: Callable[[str, object], bytes], out,
                 layout: str = "interchange", splits: Sequence[float] = (1.0, 0.0, 0.0), only_split: Optional[str] = None,
                 seed: int = 0) -> ExportReport:
    """Write the annotated tasks as a data set in `layout` under `out`."""
    from PIL import Image  # noqa: F401  (pillow is a dependency of the image helpers below)

    from refseg_model.data.interchange import write_annotations
    from refseg_model.imageio import ImageLoadError, load_image, save_mask

    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    out = Path(out)
    report = ExportReport(out=str(out), layout=layout)
    work = out if layout == "interchange" else Path(tempfile.mkdtemp(prefix="refseg-lsexport-"))
    try:
        (work / "images").mkdir(parents=True, exist_ok=True)
        (work / "masks").mkdir(parents=True, exist_ok=True)
        records = []
        for task in tasks:
            report.tasks += 1
            tid = task.get("id")
            sample, why = task_sample(cfg, task)
            if sample is None:
                report.skipped.append({"task": tid, "reason": why})
                continue
            mask, expression, annotation = sample
            url = (task.get("data") or {}).get(cfg.image_key)
            try:
                data = resolve(url, tid)
                h, w = load_image(data).shape[:2]
            except (ExportError, ImageLoadError, OSError, ValueError) as exc:
                report.skipped.append({"task": tid, "reason": f"image: {exc}"})
                continue
            if (h, w) != mask.shape:
                report.skipped.append({"task": tid, "reason": f"mask {mask.shape[1]}x{mask.shape[0]} does not match "
                                                              f"the image {w}x{h}"})
                continue
            name = f"task{tid}" if isinstance(tid, int) or str(tid).isalnum() else f"task{len(records):06d}"
            image_rel = f"images/{name}{_image_suffix(data, url)}"
            (work / image_rel).write_bytes(data)
            save_mask(mask, work / "masks" / f"{name}.png")
            records.append({"image": image_rel, "mask": f"masks/{name}.png", "expression": expression, "task": tid,
                            "annotation": annotation.get("id")})
        by_task = assign_splits([r["task"] if r["task"] is not None else i for i, r in enumerate(records)], splits, seed)
        for i, r in enumerate(records):
            r["split"] = by_task[r["task"] if r["task"] is not None else i]
        if only_split is not None:
            for r in records:
                if r["split"] != only_split:
                    for rel in (r["image"], r["mask"]):
                        (work / rel).unlink(missing_ok=True)
            records = [r for r in records if r["split"] == only_split]
        report.samples = len(records)
        report.splits = dict(Counter(r["split"] for r in records))
        if not records:
            return report
        write_annotations(work, records)
        if layout != "interchange":
            from refseg_model.data.public import read_interchange, write_samples

            write_samples(read_interchange(work), f"{layout}:{out}")
        return report
    finally:
        if work is not out:
            shutil.rmtree(work, ignore_errors=True)


# -------------------------------------------------------------------------------------------------- sources
def load_ls_json(path) -> List[dict]:
    """Tasks of a Label Studio JSON export (a list of tasks; {"tasks": [...]} and a single task accepted)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise ExportError(f"{path} is not JSON: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("tasks", [raw] if "data" in raw else None)
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ExportError(f"{path}: expected Label Studio's JSON export (a list of tasks)")
    if raw and not any("annotations" in t for t in raw):
        raise ExportError(f"{path}: the tasks carry no 'annotations' (JSON-MIN or CSV exports are not supported; "
                          "use Export -> JSON)")
    return raw


def _ls_credentials(ls_url: Optional[str], ls_token: Optional[str]) -> Tuple[str, str]:
    url = (ls_url or os.environ.get("LABEL_STUDIO_URL") or os.environ.get("LABEL_STUDIO_HOST") or "").rstrip("/")
    token = ls_token or os.environ.get("LABEL_STUDIO_API_KEY") or os.environ.get("LABEL_STUDIO_ACCESS_TOKEN") or ""
    return url, token


def _task_hosts(tasks: Sequence[dict], image_key: str) -> List[str]:
    hosts = set()
    for t in tasks:
        v = (t.get("data") or {}).get(image_key)
        if isinstance(v, str) and v.startswith(("http://", "https://")):
            hosts.add(urlsplit(v).hostname or "")
    return sorted(hosts - {""})


def _config_from(label_config: Optional[str], tasks: Sequence[dict], client=None) -> ProjectConfig:
    xml = None
    if label_config:
        p = Path(label_config)
        xml = p.read_text(encoding="utf-8") if p.is_file() else label_config
    elif client is not None:
        projects = {t.get("project") for t in tasks if isinstance(t.get("project"), int)}
        if len(projects) == 1:
            xml = (client.project(str(projects.pop())) or {}).get("label_config")
    if xml:
        try:
            return parse_label_config(xml)
        except LabelConfigError as exc:
            raise ExportError(f"label config: {exc}") from None
    return infer_config(tasks)


def export_ls_json(path, out, layout: str = "interchange", *, images_root: Optional[str] = None,
                   ls_url: Optional[str] = None, ls_token: Optional[str] = None, label_config: Optional[str] = None,
                   splits: Sequence[float] = (1.0, 0.0, 0.0), only_split: Optional[str] = None) -> ExportReport:
    """Export a Label Studio JSON export file. Without --ls-url, LABEL_STUDIO_URL is used only if images_root
    is not given (a file export is meant to work offline)."""
    tasks = load_ls_json(path)
    url, token = _ls_credentials(ls_url, ls_token) if (ls_url or not images_root) else ("", "")
    resolver_client = None
    if url and token:
        from workers.lsclient import LabelStudioClient

        resolver_client = LabelStudioClient(url, token)
    cfg = _config_from(label_config, tasks, resolver_client)
    resolve = ImageResolver(images_root, url, token, _task_hosts(tasks, cfg.image_key))
    return export_tasks(tasks, cfg, resolve, out, layout, splits, only_split)


def export_ls_project(project, out, layout: str = "interchange", *, ls_url: Optional[str] = None,
                      ls_token: Optional[str] = None, images_root: Optional[str] = None,
                      splits: Sequence[float] = (1.0, 0.0, 0.0), only_split: Optional[str] = None) -> ExportReport:
    """Export a project read through Label Studio's REST API."""
    from workers.lsclient import LabelStudioClient, LabelStudioError

    url, token = _ls_credentials(ls_url, ls_token)
    if not (url and token):
        raise ExportError("ls:PROJECT needs Label Studio's URL and an API key: --ls-url/--ls-token or "
                          "LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY")
    project = str(project).strip()
    if not project.isdigit():
        raise ExportError(f"ls:PROJECT takes a numeric project id, got {project!r}")
    client = LabelStudioClient(url, token)
    try:
        xml = (client.project(project) or {}).get("label_config") or ""
        try:
            cfg = parse_label_config(xml)
        except LabelConfigError as exc:
            raise ExportError(f"project {project}: label config: {exc}") from None
        tasks = list(client.labeled_tasks(project))
    except LabelStudioError as exc:
        raise ExportError(str(exc)) from None
    resolve = ImageResolver(images_root, url, token, _task_hosts(tasks, cfg.image_key))
    return export_tasks(tasks, cfg, resolve, out, layout, splits, only_split)
