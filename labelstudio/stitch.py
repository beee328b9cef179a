"""Annotated chips back onto their scene: one georeferenced mask per (scene, expression).

    refseg export --data ls:PROJECT|ls-json:FILE --to scene OUT

Input: the tasks of a Label Studio project made by `refseg tasks` (labelstudio.scene_tasks), each carrying
where its chip lies in `data["chip"]` (labelstudio.chip_georef). No side file is needed.

Grouping: by scene id and by the task data's expression (the expression the task was made for; a text typed in
a TextArea does not move a chip to another group).

Which annotation: the newest submitted, non-cancelled annotation of the task, ground-truth annotations first
(as `refseg export` for data sets), but an annotation with no region counts: it says "no target in this chip"
and is background. Its mask is the union of the project's BrushLabels/PolygonLabels regions
(labelstudio.samples.annotation_mask) and must have the chip's size.

Chips that are not annotated are never taken as background. They are listed in the report (task id, window)
and drawn as footprints in `<name>.unannotated.geojson`, together with the windows of the scene's chip grid
for which the export has no task at all (a JSON export made with "only annotated tasks", or chips that were
skipped as nodata-only). Their pixels are covered only where an annotated neighbour overlaps them; elsewhere
the mask is 0 and the report's `covered_pixels` says how much of the scene the annotations cover.

Overlap rule: the chip whose centre is nearest wins (Euclidean distance from the pixel's centre to the chip
centre; ties go to the chip that comes first in (row, column) order). Each pixel takes its value from exactly
one annotation, the one whose annotator saw the pixel farthest from the chip's border, i.e. with the most
context around it; with the grid of `refseg tasks` this cuts every overlap in the middle (the seam runs
overlap/2 px inside both chips). A union would let a sloppy stroke at one chip's edge, or a false positive
that the other chip's annotator removed, survive; an intersection would let one chip erase the other's target.
Where only one annotated chip covers a pixel (the neighbour is not annotated) that chip's value is used.

Output, per group, under OUT/<scene id>/:
    <expression slug>.tif       single-band uint8 GeoTIFF, 255 = target, 0 = background or not covered, the
                                scene's size and georeference (transform, CRS, GeoKeys copied), tiled, deflate
    <expression slug>.geojson   the target as polygons in the scene's CRS (formats.mask_polygons.mask_to_geojson)
    <expression slug>.unannotated.geojson   footprints of unannotated / missing chips (only if there are any)
and OUT/report.json with every group, its unannotated chips and the tasks that are not scene chips.

Memory: each annotated chip is decoded once and kept bit-packed (chip^2 / 8 bytes); the scene mask is built in
bands of BAND_ROWS rows and kept bit-packed (H * W / 8 bytes: 12.5 MB for 10,000^2, against 100 MB as bool);
the GeoTIFF is written tile by tile from the packed rows. Only the polygon tracing needs a dense bool array, of
the target's bounding box (the whole scene in the worst case).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from formats.georef import GeoReference
from formats.geotiff_writer import write_geotiff
from formats.mask_polygons import mask_to_geojson, write_geojson
from formats.raster_reader import Window

from .chip_georef import DATA_KEY, ChipDataError, ChipGeoref
from .export import _ls_credentials, infer_config, load_ls_json
from .labelconfig import LabelConfigError, ProjectConfig, parse_label_config
from .samples import AnnotationError, annotation_mask
from .scene_tasks import DEFAULT_CONFIG, chip_windows, load_label_config, scene_id_for

BAND_ROWS = 512
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


class SceneExportError(ValueError):
    """The source cannot be stitched (message meant for the user)."""


# ------------------------------------------------------------------------------------------ packed scene mask
class PackedMask:
    """An H x W bool mask stored 8 pixels per byte, row by row (np.packbits along the columns)."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)
        self.bits = np.zeros((self.height, (self.width + 7) // 8), np.uint8)

    def set_rows(self, r0: int, rows: np.ndarray) -> None:
        self.bits[r0: r0 + rows.shape[0]] = np.packbits(rows, axis=1)

    def window(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """h x w bool (only the bytes under the window are unpacked)."""
        b0, off = c0 // 8, c0 % 8
        part = self.bits[r0: r0 + h, b0: (c0 + w + 7) // 8 + 1]
        return np.unpackbits(part, axis=1)[:, off: off + w].astype(bool)

    def count(self) -> int:
        return int(_POPCOUNT[self.bits].sum(dtype=np.int64))

    def bbox(self) -> Optional[Tuple[int, int, int, int]]:
        """(row0, col0, row1, col1), end-exclusive, of the True pixels; None if there are none."""
        rows = np.flatnonzero(self.bits.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(np.unpackbits(np.bitwise_or.reduce(self.bits, axis=0), count=self.width))
        return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def stitch_chips(height: int, width: int, chips: Sequence[Tuple[Window, np.ndarray]],
                 band_rows: int = BAND_ROWS) -> Tuple[PackedMask, int]:
    """Place chip masks in their windows, nearest chip centre winning where they overlap (see the module doc).

    Args:
        chips: (window (row0, col0, h, w), mask) with the mask h x w bool, or bit-packed along its rows
            (h x ceil(w/8) uint8, np.packbits(mask, axis=1)). Ties go to the chip that comes first in
            (row0, col0) order, then in the given order.
    Returns: (the scene mask, bit-packed; the number of pixels that some chip covers).
    """
    order = sorted(range(len(chips)), key=lambda i: (chips[i][0][0], chips[i][0][1], i))
    out = PackedMask(height, width)
    covered = 0
    never = np.iinfo(np.int64).max
    for b0 in range(0, height, band_rows):
        b1 = min(height, b0 + band_rows)
        best = np.full((b1 - b0, width), never, np.int64)  # squared doubled distance to the winning centre
        value = np.zeros((b1 - b0, width), bool)
        for i in order:
            (r0, c0, h, w), mask = chips[i]
            ys, ye = max(b0, r0), min(b1, r0 + h)
            if ys >= ye:
                continue
            rows = mask[ys - r0: ye - r0]
            if rows.dtype != bool:
                rows = np.unpackbits(rows, axis=1, count=w).astype(bool)
            # distances doubled so that pixel centres (r + 0.5) and chip centres (r0 + h / 2) are integers
            dr = (2 * np.arange(ys, ye, dtype=np.int64) + 1 - (2 * r0 + h)) ** 2
            dc = (2 * np.arange(c0, c0 + w, dtype=np.int64) + 1 - (2 * c0 + w)) ** 2
            dist = dr[:, None] + dc[None, :]
            sub_best = best[ys - b0: ye - b0, c0: c0 + w]
            wins = dist < sub_best
            sub_best[wins] = dist[wins]
            value[ys - b0: ye - b0, c0: c0 + w][wins] = rows[wins]
        covered += int(np.count_nonzero(best != never))
        out.set_rows(b0, value)
    return out, covered


# ------------------------------------------------------------------------------------------ tasks -> groups
def submitted_annotation(annotations: Sequence[dict]) -> Optional[dict]:
    """The newest submitted, non-cancelled annotation, ground-truth annotations first. Unlike
    labelstudio.samples.pick_annotation (for training samples, which need a mask), an annotation without regions
    counts: for a chip it means "the target is not in this chip"."""
    done = [a for a in annotations or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not done:
        return None
    return max(done, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""), a.get("id") or 0))


@dataclass
class SceneGroup:
    """The chips of one scene for one expression."""

    scene: str
    expression: str
    size: Tuple[int, int]
    georef: Optional[GeoReference]
    grid: Tuple[int, int]
    key: tuple
    annotated: List[Tuple[Any, Window, np.ndarray]] = field(default_factory=list)  # (task, window, packed mask)
    unannotated: List[dict] = field(default_factory=list)  # {"task", "window", "reason"}
    invalid: List[dict] = field(default_factory=list)  # {"task", "window", "reason"}: annotated, unusable

    def windows_without_task(self) -> List[Window]:
        """Windows of the scene's chip grid that no task of this group covers."""
        chip, overlap = self.grid
        if not 0 <= overlap < chip:  # unknown (tasks without "grid", or mixed grids)
            return []
        seen = {tuple(e["window"]) for e in self.unannotated + self.invalid} | {tuple(w) for _, w, _ in self.annotated}
        return [w for w in chip_windows(self.size[0], self.size[1], chip, overlap) if tuple(w) not in seen]


def group_chip_tasks(tasks: Iterable[dict], cfg: ProjectConfig) -> Tuple[Dict[tuple, SceneGroup], List[dict]]:
    """{(scene, expression): SceneGroup} and the tasks that are not usable scene chips ({"task", "reason"})."""
    groups: Dict[tuple, SceneGroup] = OrderedDict()
    skipped: List[dict] = []
    text_key = cfg.text_key or "expression"
    for task in tasks:
        tid = task.get("id")
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        try:
            geo = ChipGeoref.from_data(data.get(DATA_KEY))
        except ChipDataError as exc:
            skipped.append({"task": tid, "reason": str(exc)})
            continue
        expression = data.get(text_key, data.get("expression"))
        if not isinstance(expression, str) or not expression.strip():
            skipped.append({"task": tid, "reason": f"no expression in task data {text_key!r}"})
            continue
        expression = expression.strip()
        group = groups.get((geo.scene, expression))
        if group is None:
            group = groups[(geo.scene, expression)] = SceneGroup(geo.scene, expression, geo.scene_size,
                                                                 geo.scene_georef, geo.grid, geo.scene_key())
        window = list(geo.window)
        if geo.scene_key() != group.key:
            group.invalid.append({"task": tid, "window": window, "reason": "its scene size or georeference differs "
                                  f"from the other chips of scene {geo.scene!r}"})
            continue
        if geo.grid != group.grid:
            group.grid = (0, 0)  # mixed grids: cannot tell which windows are missing
        annotation = submitted_annotation(task.get("annotations") or [])
        if annotation is None:
            reason = "skipped (cancelled)" if task.get("annotations") else "no annotation"
            group.unannotated.append({"task": tid, "window": window, "reason": reason})
            continue
        h, w = geo.window[2:]
        try:
            mask = annotation_mask(cfg, annotation.get("result") or [])
        except AnnotationError as exc:
            group.invalid.append({"task": tid, "window": window, "reason": str(exc)})
            continue
        if mask is None:
            mask = np.zeros((h, w), bool)  # submitted with no region: no target in this chip
        if mask.shape != (h, w):
            group.invalid.append({"task": tid, "window": window, "reason": f"mask of {mask.shape[1]}x{mask.shape[0]} "
                                  f"px does not match the chip window of {w}x{h} px"})
            continue
        group.annotated.append((tid, geo.window, np.packbits(mask, axis=1)))
    return groups, skipped


# ------------------------------------------------------------------------------------------ writing
def expression_slug(expression: str) -> str:
    """A file name for an expression: its words (60 chars at most) + a short hash, so names never collide."""
    words = re.sub(r"[^a-z0-9]+", "-", expression.lower()).strip("-")[:60].strip("-") or "expression"
    return f"{words}-{hashlib.sha1(expression.encode('utf-8')).hexdigest()[:8]}"


def _pixel_grid() -> GeoReference:
    return GeoReference((1.0, 0.0, 0.0, 0.0, 1.0, 0.0))  # x = column, y = row: polygons in pixel coordinates


def _footprints(windows: Sequence[Tuple[Window, dict]], georef: Optional[GeoReference]) -> dict:
    g = georef or _pixel_grid()
    features = []
    for (r0, c0, h, w), props in windows:
        cols, rows = np.array([c0, c0 + w, c0 + w, c0, c0]), np.array([r0, r0, r0 + h, r0 + h, r0])
        xs, ys = g.xy(cols, rows)
        ring = [[float(x), float(y)] for x, y in zip(xs, ys)]
        area = 0.5 * sum(ring[k][0] * ring[k + 1][1] - ring[k + 1][0] * ring[k][1] for k in range(4))
        if area < 0:
            ring = ring[::-1]  # RFC 7946: exterior counter-clockwise
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {**props, "window": [r0, c0, h, w]}})
    return {"type": "FeatureCollection", "features": features}


def write_group(group: SceneGroup, out: Union[str, Path]) -> dict:
    """Stitch one group and write its GeoTIFF mask, GeoJSON polygons (and unannotated footprints)."""
    folder = Path(out) / scene_id_for(group.scene, group.scene)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / expression_slug(group.expression)
    height, width = group.size
    mask, covered = stitch_chips(height, width, [(w, m) for _, w, m in group.annotated])
    tif = write_geotiff(base.with_suffix(".tif"), lambda r0, c0, h, w: mask.window(r0, c0, h, w).view(np.uint8) * 255,
                        group.georef, shape=(height, width), dtype=np.uint8)
    props = {"scene": group.scene, "expression": group.expression}
    box = mask.bbox()
    if box is None:
        fc = mask_to_geojson(np.zeros((1, 1), bool), group.georef, properties=props)
    else:
        r0, c0, r1, c1 = box
        fc = mask_to_geojson(mask.window(r0, c0, r1 - r0, c1 - c0), (group.georef or _pixel_grid()).window(r0, c0),
                             properties=props)
        if group.georef is None:
            fc.pop("crs", None)
    geojson = write_geojson(fc, base.with_suffix(".geojson"))
    missing = group.windows_without_task()
    gaps = [(tuple(e["window"]), {"task": e["task"], "status": "unannotated", "reason": e["reason"]})
            for e in group.unannotated + group.invalid]
    gaps += [(w, {"task": None, "status": "no task in the export"}) for w in missing]
    gaps_file = None
    if gaps:
        gaps_path = base.with_name(base.name + ".unannotated.geojson")
        gaps_file = str(write_geojson(_footprints(gaps, group.georef), gaps_path))
    return {
        "scene": group.scene, "expression": group.expression, "mask": str(tif), "geojson": str(geojson),
        "unannotated_geojson": gaps_file, "height": height, "width": width,
        "crs": group.georef.crs if group.georef else None,
        "transform": list(group.georef.transform) if group.georef else None,
        "chips_annotated": len(group.annotated), "chips_unannotated": len(group.unannotated),
        "chips_invalid": len(group.invalid), "windows_without_task": len(missing),
        "target_pixels": mask.count(), "covered_pixels": covered, "polygons": len(fc["features"]),
        "unannotated": group.unannotated, "invalid": group.invalid, "missing_windows": [list(w) for w in missing],
    }


def stitch_tasks(tasks: Sequence[dict], cfg: ProjectConfig, out: Union[str, Path]) -> dict:
    """Write every (scene, expression) group of `tasks` under `out`, plus OUT/report.json; returns the report."""
    out = Path(out)
    groups, skipped = group_chip_tasks(tasks, cfg)
    written = [write_group(g, out) for g in groups.values() if g.annotated]
    empty = [{"scene": g.scene, "expression": g.expression, "chips_unannotated": len(g.unannotated),
              "chips_invalid": len(g.invalid), "invalid": g.invalid}
             for g in groups.values() if not g.annotated]
    report = {"out": str(out), "tasks": len(tasks), "groups": written, "groups_without_annotation": empty,
              "skipped": skipped,  # counts over all groups: a group nobody started is no file, but no silence
              "chips_unannotated": sum(g["chips_unannotated"] for g in written + empty),
              "chips_invalid": sum(g["chips_invalid"] for g in written + empty),
              "windows_without_task": sum(g["windows_without_task"] for g in written)}
    if written or empty:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def summary(report: dict, limit: int = 20) -> dict:
    """The report with its lists cut to `limit` entries (for the terminal; OUT/report.json has everything)."""
    def cut(items):
        return items[:limit] + ([f"... {len(items) - limit} more in report.json"] if len(items) > limit else [])

    def cut_lists(group):
        return {k: (cut(v) if isinstance(v, list) and k != "transform" else v) for k, v in group.items()}

    return {**report, "groups": [cut_lists(g) for g in report["groups"]], "skipped": cut(report["skipped"]),
            "groups_without_annotation": [cut_lists(g) for g in report["groups_without_annotation"]]}


# ------------------------------------------------------------------------------------------ sources
def _has_regions(tasks: Sequence[dict]) -> bool:
    return any(isinstance(r, dict) and r.get("type") in ("brushlabels", "polygonlabels")
               for t in tasks for a in t.get("annotations") or [] for r in (a or {}).get("result") or [])


def config_for(tasks: Sequence[dict], label_config: Optional[str] = None) -> ProjectConfig:
    """The project's label config (XML text or file) if given; else inferred from the annotations; else (no
    region anywhere: every annotated chip is background) the config `refseg tasks` assumes."""
    if label_config:
        return load_label_config(label_config)
    if not _has_regions(tasks):
        return DEFAULT_CONFIG
    return infer_config(tasks)


def stitch_ls_json(path: Union[str, Path], out: Union[str, Path], label_config: Optional[str] = None) -> dict:
    """Stitch a Label Studio JSON export (Export -> JSON)."""
    tasks = load_ls_json(path)
    return stitch_tasks(tasks, config_for(tasks, label_config), out)


def stitch_ls_project(project: str, out: Union[str, Path], ls_url: Optional[str] = None,
                      ls_token: Optional[str] = None) -> dict:
    """Stitch a project read through Label Studio's API (URL and key default to LABEL_STUDIO_URL /
    LABEL_STUDIO_API_KEY): all its tasks, so that unannotated chips are known too."""
    from .client import LabelStudioClient, LabelStudioError

    ls_url, ls_token = _ls_credentials(ls_url, ls_token)
    project = str(project).strip()
    if not project.isdigit():
        raise SceneExportError(f"ls:PROJECT takes a numeric project id, got {project!r}")
    if not (ls_url and ls_token):
        raise SceneExportError("ls:PROJECT needs Label Studio's URL and an API key: --ls-url/--ls-token or "
                               "LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY")
    client = LabelStudioClient(ls_url, ls_token)
    try:
        xml = (client.project(project) or {}).get("label_config") or ""
        tasks = list(client.labeled_tasks(project, labeled_only=False))
    except LabelStudioError as exc:
        raise SceneExportError(str(exc)) from None
    try:
        cfg = parse_label_config(xml)
    except LabelConfigError as exc:
        raise SceneExportError(f"project {project}: label config: {exc}") from None
    return stitch_tasks(tasks, cfg, out)


def export_scene(data: str, out: Union[str, Path], *, label_config: Optional[str] = None,
                 ls_url: Optional[str] = None, ls_token: Optional[str] = None) -> dict:
    """`refseg export --data ls-json:FILE|ls:PROJECT --to scene OUT`."""
    kind, _, src = str(data).partition(":")
    if kind == "ls-json" and src:
        return stitch_ls_json(src, out, label_config)
    if kind == "ls" and src:
        return stitch_ls_project(src, out, ls_url, ls_token)
    raise SceneExportError(f"--to scene stitches Label Studio chips: --data ls-json:FILE or ls:PROJECT, got {data!r}")
