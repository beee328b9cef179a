"""A Label Studio project as a training data set: `refseg export --data ls-json:FILE|ls:PROJECT --to LAYOUT OUT`.

Sources
    ls-json:FILE   a Label Studio JSON export (Export -> JSON: a list of tasks, each with `data` and `annotations`)
    ls:PROJECT     the project read through the REST API (LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, or arguments)

Per task, the sample is what fine-tuning uses too (labelstudio/samples.py); tasks without one are skipped and
listed in the report with the reason.

Images are resolved like the workers do (labelstudio/media.py): `/data/local-files/?d=PATH` from `images_root`
(LS's LOCAL_FILES_DOCUMENT_ROOT) if given, else downloaded from Label Studio with the API key; LS uploads and
cloud URLs through Label Studio; plain http(s) URLs directly. Without a Label Studio URL, `images_root` is
searched for the file (`?d=` path, path after /data/, or the bare file name). Image bytes are copied unchanged.

The interchange layout is written directly (images/task<ID>.<ext>, masks/task<ID>.png, annotations.jsonl);
the other layouts (rrsis-d, refsegrs, risbench) are written from a temporary interchange copy by
formats.datasets.layouts.write_samples.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from formats.datasets.interchange import read_interchange, write_annotations
from formats.datasets.layouts import write_samples
from formats.datasets.splits import stable_splits

from .client import LabelStudioClient, LabelStudioError
from .labelconfig import LabelConfigError, ProjectConfig, parse_label_config
from .media import MediaFetcher, MediaPolicy
from .samples import IMAGE_SUFFIXES, write_task_samples

log = logging.getLogger(__name__)

LAYOUTS = ("interchange", "rrsis-d", "refsegrs", "risbench")
_TEXT_KEYS = ("expression", "referring_expression", "sentence", "text", "caption", "prompt", "ref")


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
            or path.endswith(IMAGE_SUFFIXES) or any(unquote(x).endswith(IMAGE_SUFFIXES)
                                                     for x in parse_qs(urlsplit(v).query).get("d", [])))


# ------------------------------------------------------------------------------------------------- images
class ImageResolver:
    """bytes of a task image: through labelstudio.media.MediaFetcher when Label Studio is reachable (or for
    /data/local-files paths with `images_root`), else by looking the file up under `images_root`."""

    def __init__(self, images_root: Optional[str] = None, ls_url: str = "", ls_token: str = "",
                 allowed_hosts: Iterable[str] = ()) -> None:
        self.root = Path(images_root).resolve() if images_root else None
        self.ls_url = (ls_url or "").rstrip("/")
        self._fetcher = None
        if self.ls_url or self.root is not None:
            # the user exports their own project: hosts named in its task URLs may be private (no SSRF concern)
            policy = MediaPolicy(document_root=str(self.root) if self.root else "",
                                 allowed_hosts=tuple(sorted({h.lower() for h in allowed_hosts if h})))
            self.ls = LabelStudioClient(self.ls_url, ls_token or "")
            self._fetcher = MediaFetcher(policy, self.ls)

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


# ---------------------------------------------------------------------------------------------------- export
def export_tasks(tasks: Iterable[dict], cfg: ProjectConfig, resolve: Callable[[str, object], bytes], out,
                 layout: str = "interchange", splits: Sequence[float] = (1.0, 0.0, 0.0), only_split: Optional[str] = None,
                 seed: int = 0) -> ExportReport:
    """Write the annotated tasks as a data set in `layout` under `out`. Splits are stable per task id
    (formats.datasets.splits.stable_splits): re-exporting a grown project keeps every task on its side."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    out = Path(out)
    report = ExportReport(out=str(out), layout=layout)
    work = out if layout == "interchange" else Path(tempfile.mkdtemp(prefix="refseg-lsexport-"))
    try:
        tasks = list(tasks)
        report.tasks = len(tasks)
        records, report.skipped = write_task_samples(tasks, cfg, resolve, work)
        try:
            by_task = stable_splits(f"refseg-export-{seed}", [_split_key(r, i) for i, r in enumerate(records)],
                                    splits)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        for i, r in enumerate(records):
            r["split"] = by_task[_split_key(r, i)]
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
            write_samples(read_interchange(work), f"{layout}:{out}")
        return report
    finally:
        if work is not out:
            shutil.rmtree(work, ignore_errors=True)


def _split_key(record: dict, index: int):
    return record["task"] if record["task"] is not None else f"#{index}"


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
        resolver_client = LabelStudioClient(url, token)
    cfg = _config_from(label_config, tasks, resolver_client)
    resolve = ImageResolver(images_root, url, token, _task_hosts(tasks, cfg.image_key))
    return export_tasks(tasks, cfg, resolve, out, layout, splits, only_split)


def export_ls_project(project, out, layout: str = "interchange", *, ls_url: Optional[str] = None,
                      ls_token: Optional[str] = None, images_root: Optional[str] = None,
                      splits: Sequence[float] = (1.0, 0.0, 0.0), only_split: Optional[str] = None) -> ExportReport:
    """Export a project read through Label Studio's REST API."""
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
