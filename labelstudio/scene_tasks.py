"""A large (Geo)TIFF scene as Label Studio tasks: browser-viewable chips, one task per (chip, expression).

    refseg tasks scene.tif --chip 1024 --overlap 128 --expressions expressions.txt --out /data/imgs/scenes \
                 [--local-files-root /data/imgs | --image-url-prefix https://host/chips] [--bands 4,3,2]
                 [--stretch 2,98] [--predict --checkpoint CKPT]

Why: nobody annotates a 10,000 x 10,000 GeoTIFF in a browser, Label Studio shows PNG/JPEG, and the workers
refuse task images above MEDIA_MAX_PIXELS. The scene is cut into chips that are annotated one by one, and each
task carries where its chip lies (`labelstudio.chip_georef`), so that `labelstudio.stitch` can put the
annotations back on the map from a plain export.

Chips
    Windows of `chip` x `chip` px with `overlap` px shared between neighbours (stride = chip - overlap); the
    last row and column of windows are moved back to end flush with the scene, so every chip has the full size
    (unless the scene is smaller than a chip). Each chip is rendered exactly as `refseg predict` renders the
    scene (formats: band selection, per-band stretch to 8 bits, nodata -> 0), with ONE set of
    stretch statistics for the whole scene (`RasterReader.stretch_params`, from an overview), so neighbouring
    chips look alike and no seams appear. Chips whose pixels are all nodata are skipped (no PNG, no task).
    Written as PNG (lossless, what the annotator sees is what the model sees) under OUT/<scene id>/.

Tasks (Label Studio import format, a JSON list, written to OUT/tasks.json one task at a time)
    {"data": {"image": URL, "expression": TEXT, "chip": {...georeference, see chip_georef...}},
     "predictions": [...]}          # only with --predict: pre-annotations, so a project starts with suggestions
    The data keys follow the project's label config when one is given (<Image value="$image">,
    <Text value="$expression">). URL: Label Studio local-files serving, `/data/local-files/?d=<path of the chip
    relative to LOCAL_FILES_DOCUMENT_ROOT>`, or `<prefix>/<path relative to OUT>` for chips served elsewhere.

Memory is bounded by a row of chips, not the scene: the TIFF is read one row of chips at a time, as a band of
chip rows x the scene's width (61 MB for a 10,000 px wide 3-band uint16 scene; only the TIFF tiles/strips it
touches are decoded, each once per row of chips), or chip by chip when that band would exceed ROW_BAND_BYTES;
the stretch statistics come from an overview of <= 2048 px; tasks are written out as they are made.

This module never imports torch: `--predict` passes in a function (refseg_model.scene_predict) that maps a chip
and the expressions to (mask, score) pairs.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import numpy as np
from PIL import Image

from formats.image_source import is_tiff
from formats.raster_reader import RasterReader, Window, window_starts
from formats.stretch import parse_bands, parse_stretch

from .chip_georef import DATA_KEY, ChipGeoref, scene_georef_from
from .labelconfig import LabelConfigError, ProjectConfig, parse_label_config

# A chip and expressions -> one (H x W bool mask, score) per expression (see refseg_model.scene_predict).
ChipPredict = Callable[[np.ndarray, Sequence[str]], List[Tuple[np.ndarray, float]]]

# The README's label config: what tasks and pre-annotations look like when no config is given.
DEFAULT_CONFIG = ProjectConfig(image_name="image", image_key="image", output="brush", from_name="mask",
                               label="target", text_key="expression", textarea_name="prompt")
TASKS_FILE = "tasks.json"
MIN_CHIP = 32
ROW_BAND_BYTES = 256 << 20  # a row of chips is read as one full-width band up to this size (raw band values)


class SceneTasksError(ValueError):
    """Bad input for `refseg tasks` (message meant for the user)."""


# ------------------------------------------------------------------------------------------------ the grid
def chip_windows(height: int, width: int, chip: int, overlap: int) -> List[Window]:
    """(row0, col0, h, w) of every chip, row-major; h, w = min(chip, scene side)."""
    if not 0 <= overlap < chip:
        raise SceneTasksError(f"invalid chip grid: chip {chip} px, overlap {overlap} px (0 <= overlap < chip)")
    h, w = min(chip, height), min(chip, width)
    return [(r, c, h, w) for r in window_starts(height, chip, chip - overlap)
            for c in window_starts(width, chip, chip - overlap)]


def check_grid(chip: int, overlap: int) -> None:
    if not isinstance(chip, int) or chip < MIN_CHIP:
        raise SceneTasksError(f"--chip must be an integer of at least {MIN_CHIP} px, got {chip!r}")
    if not isinstance(overlap, int) or not 0 <= overlap < chip:
        raise SceneTasksError(f"--overlap must be an integer in [0, chip) = [0, {chip}), got {overlap!r}")


# ------------------------------------------------------------------------------------------------ inputs
def read_expressions(path: Optional[Union[str, Path]] = None, extra: Iterable[str] = ()) -> List[str]:
    """Expressions from a UTF-8 file (one per line; blank lines and lines starting with '#' ignored) and/or
    given directly; duplicates dropped, order kept."""
    texts: List[str] = []
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise SceneTasksError(f"expressions file {path} not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SceneTasksError(f"cannot read expressions file {path}: {exc}") from None
        texts += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    texts += [t.strip() for t in extra if isinstance(t, str) and t.strip()]
    out = list(dict.fromkeys(texts))
    if not out:
        raise SceneTasksError("no referring expression: give --expressions FILE (one per line) or --expression TEXT")
    return out


def scene_id_for(path: Union[str, Path], given: Optional[str] = None) -> str:
    """The scene's id in task data and its chip folder name: `given`, else the file stem; [A-Za-z0-9._-] only."""
    raw = given if given is not None else Path(path).stem
    sid = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._")
    if not sid:
        raise SceneTasksError(f"cannot make a scene id from {raw!r}: give --scene-id")
    return sid


def local_files_url(document_root: Union[str, Path]) -> Callable[[Path, Path], str]:
    """Chip path -> `/data/local-files/?d=<path relative to Label Studio's LOCAL_FILES_DOCUMENT_ROOT>`."""
    root = Path(document_root).resolve()

    def url(chip: Path, out_dir: Path) -> str:
        try:
            rel = chip.resolve().relative_to(root)
        except ValueError:
            raise SceneTasksError(f"the output folder {out_dir} is not inside the local-files root {root}: Label "
                                  "Studio can only serve files under its LOCAL_FILES_DOCUMENT_ROOT") from None
        return "/data/local-files/?d=" + quote(rel.as_posix(), safe="/")

    return url


def prefixed_url(prefix: str) -> Callable[[Path, Path], str]:
    """Chip path -> `<prefix>/<path relative to the output folder>` (chips served by any web server)."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise SceneTasksError("--image-url-prefix must not be empty")
    base = prefix.strip().rstrip("/")

    def url(chip: Path, out_dir: Path) -> str:
        return base + "/" + quote(chip.resolve().relative_to(out_dir.resolve()).as_posix(), safe="/")

    return url


LOCAL_FILES_ENV = ("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_DOCUMENT_ROOT")


def image_url_for(prefix: Optional[str] = None, local_files_root: Optional[str] = None
                  ) -> Callable[[Path, Path], str]:
    """How tasks point at their chips: a URL prefix, else Label Studio local-files serving under
    `local_files_root` (default: $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT or $LOCAL_FILES_DOCUMENT_ROOT)."""
    if prefix is not None and local_files_root is not None:
        raise SceneTasksError("give either --image-url-prefix or --local-files-root, not both")
    if prefix is not None:
        return prefixed_url(prefix)
    root = local_files_root or next((os.environ[k] for k in LOCAL_FILES_ENV if os.environ.get(k)), None)
    if not root:
        raise SceneTasksError("tell how Label Studio will reach the chips: --local-files-root DIR (Label Studio's "
                              "LOCAL_FILES_DOCUMENT_ROOT, with the output folder inside it) or --image-url-prefix URL")
    if not Path(root).is_dir():
        raise SceneTasksError(f"the local-files root {root} is not a folder")
    return local_files_url(root)


def load_label_config(value: Optional[str] = None) -> ProjectConfig:
    """The project's label config (an XML file or the XML text) as a ProjectConfig; None -> DEFAULT_CONFIG.
    It decides the task data keys and the names in pre-annotations."""
    if not value:
        return DEFAULT_CONFIG
    p = Path(value)
    try:
        return parse_label_config(p.read_text(encoding="utf-8") if p.is_file() else value)
    except LabelConfigError as exc:
        raise SceneTasksError(f"label config: {exc}") from None


# ------------------------------------------------------------------------------------------------ chips
@dataclass
class Chip:
    geo: ChipGeoref
    path: Path
    rgb: np.ndarray  # h x w x 3 uint8, as written
    nodata: Optional[np.ndarray]  # h x w bool, or None when every pixel has data


@dataclass
class SceneReport:
    scene: str
    path: str
    height: int = 0
    width: int = 0
    windows: int = 0
    chips: int = 0
    nodata_chips: int = 0
    tasks: int = 0
    crs: Optional[str] = None
    bands: List[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def scene_chips(scene: Union[str, Path], out_dir: Union[str, Path], *, scene_id: Optional[str] = None,
                chip: int = 1024, overlap: int = 128, bands=None, stretch="auto",
                report: Optional[SceneReport] = None) -> Iterator[Chip]:
    """Cut `scene` into chips, write each as OUT/<scene id>/r<row0>_c<col0>.png and yield it (nodata-only chips
    are counted in `report.nodata_chips` and skipped). One chip's pixels are in memory at a time."""
    check_grid(chip, overlap)
    scene = Path(scene)
    if not scene.is_file():
        raise FileNotFoundError(f"scene {scene} not found")
    if not is_tiff(scene):
        raise SceneTasksError(f"{scene} is not a (Geo)TIFF: `refseg tasks` streams TIFF/GeoTIFF/COG scenes "
                              "(convert others, e.g. gdal_translate -of COG)")
    sid = scene_id_for(scene, scene_id)
    band_list = parse_bands(bands)
    mode = parse_stretch(stretch)
    out_dir = Path(out_dir)
    with RasterReader(scene) as reader:
        band_list = reader.check_bands(band_list)
        st = reader.stretch_params(band_list, mode)  # once, for the whole scene
        georef = scene_georef_from(reader.georef)
        windows = chip_windows(reader.height, reader.width, chip, overlap)
        if report is not None:
            report.height, report.width, report.windows = reader.height, reader.width, len(windows)
            report.crs, report.bands = (georef.crs if georef else None), band_list
        chip_dir = out_dir / sid
        chip_dir.mkdir(parents=True, exist_ok=True)
        stretch_data = None if st.lo is None else {"lo": list(st.lo), "hi": list(st.hi)}
        for window, raw in _raw_chips(reader, windows, band_list):
            valid = reader.valid_mask(raw)  # what RasterReader.read_rgb does, on a slice of the row band
            nodata = None if valid is None else ~valid
            if nodata is not None and nodata.all():
                if report is not None:
                    report.nodata_chips += 1
                continue
            rgb = st.apply(raw, nodata)
            if rgb.shape[2] == 1:
                rgb = np.repeat(rgb, 3, axis=2)
            path = chip_dir / f"r{window[0]:06d}_c{window[1]:06d}.png"
            Image.fromarray(rgb).save(path)
            if report is not None:
                report.chips += 1
            yield Chip(ChipGeoref(sid, window, (reader.height, reader.width), (chip, overlap), georef,
                                  tuple(band_list), stretch_data), path, rgb, nodata)


def _raw_chips(reader: RasterReader, windows: Sequence[Window], bands: List[int]
               ) -> Iterator[Tuple[Window, np.ndarray]]:
    """(window, raw band values) for each window, row of chips by row of chips.

    A row of chips is read as one band of the scene's full width when that fits ROW_BAND_BYTES: every TIFF tile
    or strip is then decoded once per row of chips, instead of once per chip that touches it (a 1,024-px chip
    not aligned to 512-px tiles touches 9 tiles; a strip of a striped TIFF spans every chip of its row). Wider
    scenes are read chip by chip.
    """
    k = 0
    while k < len(windows):
        r0, _, h, _ = windows[k]
        row = [w for w in windows[k:] if w[0] == r0]
        k += len(row)
        if h * reader.width * len(bands) * reader.dtype.itemsize <= ROW_BAND_BYTES:
            band = reader.read_window((r0, 0, h, reader.width), bands)
            for w in row:
                yield w, band[:, w[1]: w[1] + w[3]]
            del band
        else:
            for w in row:
                yield w, reader.read_window(w, bands)


def chip_tasks(chip: Chip, url: str, expressions: Sequence[str], cfg: ProjectConfig = DEFAULT_CONFIG,
               predict: Optional[ChipPredict] = None, model_version: str = "") -> List[dict]:
    """One Label Studio task per expression for `chip`; with `predict`, each carries the model's mask as a
    pre-annotation (nodata pixels removed) in Label Studio's import format."""
    geo = chip.geo.to_data()
    text_key = cfg.text_key or "expression"
    tasks = [{"data": {cfg.image_key: url, text_key: e, DATA_KEY: geo}} for e in expressions]
    if predict is not None:
        from .predictions import prediction  # brush RLE / polygon regions

        preds = predict(chip.rgb, list(expressions))
        if len(preds) != len(expressions):
            raise RuntimeError(f"the predictor returned {len(preds)} masks for {len(expressions)} expressions")
        for task, (mask, score) in zip(tasks, preds):
            mask = np.asarray(mask, bool)
            if chip.nodata is not None:
                mask = mask & ~chip.nodata
            task["predictions"] = [prediction(mask, score, cfg, model_version)]
    return tasks


class TaskFileWriter:
    """Writes a Label Studio import file (a JSON list) one task at a time, so that only the task being written
    is in memory. Written to `<path>.part` and renamed when complete: a run that fails half-way leaves no
    import file that looks complete."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.count = 0
        self._part = self.path.with_name(self.path.name + ".part")
        self._fh = open(self._part, "w", encoding="utf-8")
        self._fh.write("[")

    def write(self, task: dict) -> None:
        self._fh.write(("," if self.count else "") + "\n" + json.dumps(task, separators=(",", ":")))
        self.count += 1

    def __enter__(self) -> "TaskFileWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self._fh.write("\n]\n")
            self._fh.close()
            self._part.replace(self.path)
        else:
            self._fh.close()
            self._part.unlink(missing_ok=True)


def write_scene_tasks(scenes: Sequence[Union[str, Path]], out_dir: Union[str, Path], expressions: Sequence[str], *,
                      image_url: Callable[[Path, Path], str], chip: int = 1024, overlap: int = 128, bands=None,
                      stretch="auto", scene_id: Optional[str] = None, cfg: ProjectConfig = DEFAULT_CONFIG,
                      predict: Optional[ChipPredict] = None, model_version: str = "",
                      tasks_file: str = TASKS_FILE) -> dict:
    """Chips and one import file OUT/tasks.json for all `scenes`; returns a report (per scene: windows, chips
    written, nodata chips skipped, tasks)."""
    if not scenes:
        raise SceneTasksError("no scene given")
    if scene_id is not None and len(scenes) > 1:
        raise SceneTasksError("--scene-id names one scene; give one scene per call, or let the file names be the ids")
    ids = [scene_id_for(s, scene_id) for s in scenes]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SceneTasksError(f"scenes with the same id {dup}: rename the files, or run one scene per call with "
                              "--scene-id")
    check_grid(chip, overlap)
    parse_bands(bands), parse_stretch(stretch)  # bad values fail before any file is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    with TaskFileWriter(out_dir / tasks_file) as writer:
        for scene, sid in zip(scenes, ids):
            rep = SceneReport(sid, str(scene))
            for c in scene_chips(scene, out_dir, scene_id=sid, chip=chip, overlap=overlap, bands=bands,
                                 stretch=stretch, report=rep):
                for task in chip_tasks(c, image_url(c.path, out_dir), expressions, cfg, predict, model_version):
                    writer.write(task)
                    rep.tasks += 1
            reports.append(rep.to_dict())
    return {"tasks_file": str(out_dir / tasks_file), "tasks": writer.count, "expressions": len(expressions),
            "chip": chip, "overlap": overlap, "scenes": reports, "predictions": predict is not None}

