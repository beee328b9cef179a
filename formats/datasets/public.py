"""Readers and writers for the public RRSIS data set layouts, and a dispatcher over all layouts.

Layouts (see docs/model.md sections 1.7 and 7):

* **RefSegRS** / **RISBench** (same layout, different folder names)::

      ROOT/images/<id>.tif        (RISBench: ROOT/img_rgb/)   .tif/.tiff/.png/.jpg/.jpeg, found by id
      ROOT/masks/<id>.tif         (RISBench: ROOT/mask/)      0/1 or 0/255: any non-zero pixel is target
      ROOT/output_phrase_{train,val,test}.txt                 lines "<image_id> <expression...>"

* **RRSIS-D** (RMSIN's RefCOCO-style layout)::

      ROOT/refs(unc).p            pickle: list of refs {ref_id, ann_id, image_id, split, sentences, category_id,
                                  file_name}; sentences [{sent, raw, tokens, sent_id}]; one sample per sentence
      ROOT/instances.json         COCO: images [{id, file_name, width, height}], annotations [{id, image_id,
                                  segmentation, bbox, area, category_id, iscrowd}], categories
      ROOT/images/rrsisd/JPEGImages/<file_name>   (also accepted: ROOT/JPEGImages/, ROOT/images/)

  RMSIN's own tree (``refer/data/rrsisd/refs(unc).p`` next to ``refer/data/images/rrsisd/JPEGImages``) is also
  accepted with ROOT = ``refer/data``. Segmentations are COCO polygons, or COCO RLE (uncompressed list counts or
  compressed string counts, column-major), or a list of RLE dicts (the form RMSIN's refer.py decodes); a list of
  several parts is their union.

  The refs pickle is untrusted: it is read with an unpickler that refuses every global (refs pickles hold only
  dict/list/str/int/float, which need none), so a pickle that references a callable raises instead of running it.

  Masks live inside instances.json, so RRSIS-D samples carry ``mask = ROOT/instances.json#ann=<ann_id>``; read any
  sample's mask with `load_sample_mask`, which handles both this form and plain mask files.

`load_samples("rrsis-d:PATH" | "rrsisd:PATH" | "refsegrs:PATH" | "risbench:PATH" | "PATH")` dispatches on the
prefix; a plain path is the interchange layout (formats.datasets.interchange). `write_samples` is the inverse.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, MutableMapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from formats.datasets.interchange import SPLITS, DatasetFormatError, Sample, read_interchange, write_annotations
from formats.images import load_image, load_mask, save_mask

PathLike = Union[str, Path]

IMAGE_EXTS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")  # preference order when several files share an id
PHRASE_FILE = "output_phrase_{split}.txt"
LAYOUT_DIRS = {"refsegrs": ("images", "masks"), "risbench": ("img_rgb", "mask")}

REFS_FILE = "refs(unc).p"
INSTANCES_FILE = "instances.json"
RRSISD_IMAGE_DIRS = (("images", "rrsisd", "JPEGImages"), ("JPEGImages",), ("images",))
ANN_TAG = "#ann="

# ----------------------------------------------------------------------------------------------------------------
# small helpers


def _check_split(split: Optional[str]) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _copy_image(src: Path, dst_stem: Path) -> Path:
    """Copy an image file byte for byte, keeping its extension when a reader finds it; otherwise write a PNG."""
    ext = src.suffix.lower()
    if ext in IMAGE_EXTS:
        dst = dst_stem.with_name(dst_stem.name + ext)
        shutil.copyfile(src, dst)
    else:
        dst = dst_stem.with_name(dst_stem.name + ".png")
        Image.fromarray(load_image(src)).save(dst)
    return dst


def _clean_expression(expr: str, where: str) -> str:
    text = str(expr).strip()
    if not text:
        raise ValueError(f"{where}: empty expression")
    if "\n" in text or "\r" in text:
        raise ValueError(f"{where}: expression contains a line break, which this layout cannot store: {text!r}")
    return text


# ----------------------------------------------------------------------------------------------------------------
# RefSegRS / RISBench


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
    _check_split(split)
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
        expr = _clean_expression(s.expression, f"sample {k}")
        key = (str(s.image), str(s.mask))
        if key not in ids:
            sid = str(len(ids))
            _copy_image(Path(s.image), img_dir / sid)
            save_mask(load_sample_mask(s, cache), mask_dir / f"{sid}.tif")
            ids[key] = sid
        lines[s.split].append(f"{ids[key]} {expr}\n")
    for sp, ls in lines.items():
        _atomic_write(out_root / PHRASE_FILE.format(split=sp), "".join(ls).encode("utf-8"))
    return out_root


# ----------------------------------------------------------------------------------------------------------------
# COCO masks: RLE (uncompressed and compressed string) and polygons


def rle_string_to_counts(s: Union[str, bytes]) -> List[int]:
    """Decode COCO's compressed RLE string (pycocotools maskApi.c rleFrString) to run lengths.

    Each count is a variable-length little-endian sequence of 5-bit groups, one character per group
    (char - 48); bit 0x20 means "more groups follow", bit 0x10 of the last group is the sign. From the fourth count
    on (index > 2) the value stored is the difference to the count two places before.
    """
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: List[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise DatasetFormatError(f"truncated compressed RLE string {data[:40]!r}")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise DatasetFormatError(f"invalid character {chr(data[p])!r} in compressed RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths as COCO's compressed RLE string (pycocotools maskApi.c rleToString)."""
    out = bytearray()
    for i, cnt in enumerate(counts):
        x = int(cnt) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C on a signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def rle_decode(rle: Dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE {"counts": [ints] or "compressed string", "size": [h, w]} to an H x W bool mask.

    Runs alternate background/target, starting with background, over the pixels in column-major order.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetFormatError(f"bad RLE object ({exc!r})") from exc
    runs = rle_string_to_counts(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise DatasetFormatError(f"RLE counts sum to {sum(runs)} (negative runs: {any(r < 0 for r in runs)}), "
                                 f"expected h*w = {h}*{w} = {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return np.ascontiguousarray(flat.reshape((w, h)).T)  # column-major


def rle_encode(mask: np.ndarray, compressed: bool = True) -> Dict[str, Any]:
    """Encode an H x W mask (non-zero = target) as COCO RLE; compressed=True gives string counts."""
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {m.shape}")
    h, w = m.shape
    flat = m.T.reshape(-1)  # column-major
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs  # counts start with a (possibly empty) background run
    if not runs:
        runs = [0]
    return {"size": [h, w], "counts": rle_counts_to_string(runs) if compressed else [int(r) for r in runs]}


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons [[x1, y1, x2, y2, ...], ...] (PIL ImageDraw, fill and outline) to H x W bool."""
    canvas = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = [float(v) for v in poly]
        if len(pts) < 6 or len(pts) % 2:
            raise DatasetFormatError(f"polygon needs an even number (>= 6) of coordinates, got {len(pts)}")
        draw.polygon(list(zip(pts[0::2], pts[1::2])), fill=1, outline=1)
    return np.asarray(canvas) > 0


def segmentation_to_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO `segmentation` (polygons, an RLE dict, or a list of RLE dicts) as an H x W bool mask.

    height/width are the image size, used by polygons; RLE objects carry their own size.
    """
    if isinstance(seg, dict):
        return rle_decode(seg)
    if isinstance(seg, list):
        if not seg:
            return np.zeros((int(height), int(width)), dtype=bool)
        if all(isinstance(part, dict) for part in seg):
            out = rle_decode(seg[0])
            for part in seg[1:]:
                nxt = rle_decode(part)
                if nxt.shape != out.shape:
                    raise DatasetFormatError(f"RLE parts of one segmentation differ in size: {out.shape} "
                                             f"vs {nxt.shape}")
                out |= nxt
            return out
        if all(isinstance(part, list) for part in seg):
            return polygons_to_mask(seg, height, width)
    raise DatasetFormatError(f"unsupported segmentation of type {type(seg).__name__}")


# ----------------------------------------------------------------------------------------------------------------
# the refs pickle (untrusted)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global: only builtin containers and scalars can be loaded."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_refs_pickle(source: Union[PathLike, bytes]) -> List[Dict[str, Any]]:
    """Safely load a RefCOCO-style refs pickle (a list of dicts) from a path or bytes.

    Raises:
        DatasetFormatError: the pickle references any class or function (it would run code), or is not a list
            of dicts.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    where = "refs pickle" if isinstance(source, bytes) else str(source)
    obj: Any = None
    for encoding in ("utf-8", "latin-1"):  # Python 2 pickles store str as bytes
        try:
            obj = _NoGlobalsUnpickler(io.BytesIO(data), encoding=encoding).load()
            break
        except UnicodeDecodeError:
            continue
        except pickle.UnpicklingError as exc:
            raise DatasetFormatError(f"{where}: unsafe or invalid pickle ({exc}); refs pickles may contain only "
                                     "lists, dicts, strings and numbers") from exc
        except Exception as exc:  # truncated / corrupt data raise various types
            raise DatasetFormatError(f"{where}: cannot read pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DatasetFormatError(f"{where}: expected a list of ref dicts, got {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------------------------------------------
# RRSIS-D

_INSTANCES_CACHE: "OrderedDict[str, Any]" = OrderedDict()
_INSTANCES_CACHE_SIZE = 4
_INSTANCES_LOCK = threading.Lock()


def _load_instances(path: Path, cache: Optional[MutableMapping[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Parse instances.json once: {"images": {str(id): image}, "anns": {str(id): annotation}}, cached per path.

    The cache entry is keyed by the absolute path and revalidated against the file's mtime and size. The
    module-level cache (cache=None) is guarded by a lock; a caller-owned cache is the caller's to share.
    """
    if cache is None:
        with _INSTANCES_LOCK:
            return _load_instances_into(path, None)
    return _load_instances_into(path, cache)


def _load_instances_into(path: Path, cache: Optional[MutableMapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    key = os.path.abspath(path)
    try:
        st = os.stat(key)
    except FileNotFoundError:
        raise DatasetFormatError(f"{path} not found") from None
    stamp = (st.st_mtime_ns, st.st_size)
    store = _INSTANCES_CACHE if cache is None else cache
    hit = store.get(key)
    if hit is not None and hit[0] == stamp:
        if cache is None:
            _INSTANCES_CACHE.move_to_end(key)
        return hit[1]
    try:
        with open(key, encoding="utf-8") as fh:
            coco = json.load(fh)
        images = {str(im["id"]): im for im in coco["images"]}
        anns = {str(a["id"]): a for a in coco["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetFormatError(f"{path}: not a COCO instances file ({exc!r})") from exc
    index = {"images": images, "anns": anns}
    store[key] = (stamp, index)
    if cache is None:
        while len(_INSTANCES_CACHE) > _INSTANCES_CACHE_SIZE:
            _INSTANCES_CACHE.popitem(last=False)
    return index


def ann_mask_path(instances: PathLike, ann_id: Any) -> Path:
    """The mask "path" of an annotation inside a COCO file: INSTANCES#ann=<ann_id>."""
    return Path(f"{instances}{ANN_TAG}{ann_id}")


def parse_ann_mask_path(mask: PathLike) -> Optional[Tuple[Path, str]]:
    """(instances.json path, ann id) for an INSTANCES#ann=<id> mask path, None for a plain file path."""
    text = str(mask)
    if ANN_TAG not in text or os.path.isfile(text):
        return None
    base, _, ann = text.rpartition(ANN_TAG)
    return Path(base), ann


def _ann_mask(index: Dict[str, Dict[str, Any]], ann_id: str, where: str) -> np.ndarray:
    ann = index["anns"].get(ann_id)
    if ann is None:
        raise DatasetFormatError(f"{where}: no annotation with id {ann_id}")
    image = index["images"].get(str(ann.get("image_id")))
    if image is None:
        raise DatasetFormatError(f"{where}: annotation {ann_id} refers to unknown image {ann.get('image_id')}")
    try:
        return segmentation_to_mask(ann.get("segmentation"), int(image["height"]), int(image["width"]))
    except DatasetFormatError as exc:
        raise DatasetFormatError(f"{where}: annotation {ann_id}: {exc}") from exc


def load_sample_mask(sample: Union[Sample, PathLike], cache: Optional[MutableMapping[str, Any]] = None) -> np.ndarray:
    """The mask of a sample (or a mask path) as an H x W bool array.

    Plain paths go through formats.images.load_mask (any non-zero pixel is target). INSTANCES#ann=<id> paths are
    decoded from the COCO file, parsed once per file and kept in `cache` (a dict you own) or, when None, in a
    small module-level cache.
    """
    mask = sample.mask if isinstance(sample, Sample) else sample
    ref = parse_ann_mask_path(mask)
    if ref is None:
        return load_mask(Path(mask))
    instances, ann_id = ref
    return _ann_mask(_load_instances(instances, cache), ann_id, str(instances))


def _locate_rrsisd(root: Path) -> Tuple[Path, Path]:
    """(annotation folder holding refs(unc).p and instances.json, image folder)."""
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a directory")
    ann_dir = root
    if not (root / REFS_FILE).is_file() and (root / "rrsisd" / REFS_FILE).is_file():
        ann_dir = root / "rrsisd"  # RMSIN's refer/data tree
    for name in (REFS_FILE, INSTANCES_FILE):
        if not (ann_dir / name).is_file():
            raise DatasetFormatError(f"{ann_dir / name} not found: not an RRSIS-D layout")
    bases = [ann_dir] if ann_dir == root else [ann_dir, root]
    candidates = [base.joinpath(*parts) for base in bases for parts in RRSISD_IMAGE_DIRS]
    for cand in candidates:
        if cand.is_dir():
            return ann_dir, cand
    raise DatasetFormatError(f"{root}: no image folder (looked for "
                             f"{', '.join(str(c.relative_to(root)) for c in candidates)})")


def read_rrsisd(root: PathLike, split: Optional[str] = None) -> List[Sample]:
    """Read an RRSIS-D tree: one Sample per sentence of each ref, in refs order.

    The expression is the sentence's "raw" text (what LAVT/RMSIN feed the text encoder), else its "sent".
    Sample.mask is ``<annotation folder>/instances.json#ann=<ann_id>``; read it with `load_sample_mask`.
    """
    _check_split(split)
    root = Path(root)
    ann_dir, image_dir = _locate_rrsisd(root)
    refs_path, instances_path = ann_dir / REFS_FILE, ann_dir / INSTANCES_FILE
    refs = load_refs_pickle(refs_path)
    index = _load_instances(instances_path)
    samples: List[Sample] = []
    missing: List[str] = []
    for k, ref in enumerate(refs):
        where = f"{refs_path}: ref #{k}"
        try:
            sp, ann_id, sentences = ref["split"], str(ref["ann_id"]), ref["sentences"]
        except KeyError as exc:
            raise DatasetFormatError(f"{where}: missing key {exc}") from exc
        if sp not in SPLITS:
            raise DatasetFormatError(f"{where}: split {sp!r} is not one of {SPLITS}")
        if split is not None and sp != split:
            continue
        ann = index["anns"].get(ann_id)
        if ann is None:
            raise DatasetFormatError(f"{where}: ann_id {ann_id} not in {instances_path}")
        image = index["images"].get(str(ann.get("image_id", ref.get("image_id"))))
        file_name = image.get("file_name") if image else ref.get("file_name")
        if not file_name:
            raise DatasetFormatError(f"{where}: no image file name for image {ref.get('image_id')}")
        image_path = image_dir / file_name
        if not image_path.is_file():
            missing.append(str(file_name))
        if not isinstance(sentences, list):
            raise DatasetFormatError(f"{where}: 'sentences' is not a list")
        for j, sent in enumerate(sentences):
            text = (sent.get("raw") or sent.get("sent")) if isinstance(sent, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DatasetFormatError(f"{where}: sentence {j} has no 'raw' or 'sent' text")
            samples.append(Sample(image_path, ann_mask_path(instances_path, ann_id), text.strip(), sp))
    if missing:
        raise DatasetFormatError(f"{image_dir}: {len(missing)} image file(s) referenced by the refs are missing, "
                                 f"e.g. {', '.join(sorted(set(missing))[:5])}")
    return samples


def write_rrsisd(samples: Iterable[Sample], out_root: PathLike, compressed: bool = True) -> Path:
    """Write samples as an RRSIS-D tree that RMSIN/LAVT's refer.py and this module's reader both load.

    * images/rrsisd/JPEGImages/<image_id:05d><ext>: each distinct image copied byte for byte;
    * instances.json: one image entry per image (real width/height), one annotation per distinct (image, mask)
      with ``segmentation = [RLE]`` (compressed string counts by default, the form pycocotools decodes; with
      compressed=False, uncompressed list counts), exact bbox and area, category 1 "object";
    * refs(unc).p: pickle protocol 2 of builtins only, one ref per (image, mask, split) holding its sentences
      (sent = lower-cased whitespace-joined tokens, raw = the expression, tokens, sent_id) and "sent_ids".

    Mask pixels round-trip exactly (RLE is lossless). Returns out_root.
    """
    out_root = Path(out_root)
    img_dir = out_root.joinpath(*RRSISD_IMAGE_DIRS[0])
    img_dir.mkdir(parents=True, exist_ok=True)
    images: Dict[str, Dict[str, Any]] = {}
    anns: Dict[Tuple[str, str], Dict[str, Any]] = {}
    refs: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    cache: Dict[str, Any] = {}
    sent_id = 0
    for k, s in enumerate(samples):
        if s.split not in SPLITS:
            raise ValueError(f"sample {k}: split {s.split!r} is not one of {SPLITS}")
        expr = _clean_expression(s.expression, f"sample {k}")
        ik, mk = str(s.image), str(s.mask)
        if ik not in images:
            iid = len(images) + 1
            h, w = load_image(Path(s.image)).shape[:2]
            dst = _copy_image(Path(s.image), img_dir / f"{iid:05d}")
            images[ik] = {"id": iid, "file_name": dst.name, "width": int(w), "height": int(h)}
        image = images[ik]
        if (ik, mk) not in anns:
            mask = load_sample_mask(s, cache)
            ys, xs = np.nonzero(mask)
            bbox = ([int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                    if xs.size else [0, 0, 0, 0])
            anns[(ik, mk)] = {"id": len(anns) + 1, "image_id": image["id"],
                              "segmentation": [rle_encode(mask, compressed)], "bbox": bbox, "area": int(xs.size),
                              "category_id": 1, "iscrowd": 0}
        ann = anns[(ik, mk)]
        if (ik, mk, s.split) not in refs:
            refs[(ik, mk, s.split)] = {"ref_id": len(refs) + 1, "ann_id": ann["id"], "image_id": image["id"],
                                       "split": s.split, "sentences": [], "sent_ids": [], "category_id": 1,
                                       "file_name": image["file_name"]}
        ref = refs[(ik, mk, s.split)]
        sent_id += 1
        tokens = expr.split()
        ref["sentences"].append({"sent": " ".join(tokens).lower(), "raw": expr, "tokens": tokens,
                                 "sent_id": sent_id})
        ref["sent_ids"].append(sent_id)
    coco = {"images": list(images.values()), "annotations": list(anns.values()),
            "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
    _atomic_write(out_root / INSTANCES_FILE, json.dumps(coco).encode("utf-8"))
    _atomic_write(out_root / REFS_FILE, pickle.dumps(list(refs.values()), protocol=2))
    return out_root


# ----------------------------------------------------------------------------------------------------------------
# interchange writer and dispatch


def write_interchange(samples: Iterable[Sample], out_root: PathLike) -> Path:
    """Write samples in the interchange layout: images copied to images/, masks as 0/255 PNG in masks/.

    Works for every sample kind (plain mask files and INSTANCES#ann= masks). Returns DIR/annotations.jsonl.
    """
    out_root = Path(out_root)
    (out_root / "images").mkdir(parents=True, exist_ok=True)
    (out_root / "masks").mkdir(parents=True, exist_ok=True)
    image_names: Dict[str, str] = {}
    mask_names: Dict[str, str] = {}
    cache: Dict[str, Any] = {}
    records = []
    for k, s in enumerate(samples):
        if s.split not in SPLITS:
            raise ValueError(f"sample {k}: split {s.split!r} is not one of {SPLITS}")
        ik, mk = str(s.image), str(s.mask)
        if ik not in image_names:
            dst = _copy_image(Path(s.image), out_root / "images" / f"{len(image_names):06d}")
            image_names[ik] = f"images/{dst.name}"
        if mk not in mask_names:
            name = f"masks/{len(mask_names):06d}.png"
            save_mask(load_sample_mask(s, cache), out_root / name)
            mask_names[mk] = name
        records.append({"image": image_names[ik], "mask": mask_names[mk], "expression": s.expression,
                        "split": s.split})
    return write_annotations(out_root, records)


READERS: Dict[str, Callable[[PathLike, Optional[str]], List[Sample]]] = {
    "rrsis-d": read_rrsisd,
    "rrsisd": read_rrsisd,
    "refsegrs": read_refsegrs,
    "risbench": read_refsegrs,
    "interchange": read_interchange,
}


def _split_spec(spec: str) -> Tuple[Optional[str], str]:
    prefix, sep, rest = str(spec).partition(":")
    if sep and prefix.lower() in READERS:
        if not rest:
            raise DatasetFormatError(f"data set spec {spec!r} has no path after {prefix!r}")
        return prefix.lower(), rest
    return None, str(spec)


def load_samples(spec: str, split: Optional[str] = None) -> List[Sample]:
    """Read any supported data set.

    Args:
        spec: "rrsis-d:PATH" / "rrsisd:PATH", "refsegrs:PATH", "risbench:PATH", "interchange:PATH", or a plain
            PATH to an interchange-layout folder.
        split: "train", "val", "test" or None (all).
    """
    _check_split(split)
    kind, path = _split_spec(spec)
    if kind is not None:
        return READERS[kind](path, split)
    root = Path(path)
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: not a directory (data set specs: PATH, rrsis-d:PATH, refsegrs:PATH, "
                                 "risbench:PATH)")
    if not (root / "annotations.jsonl").is_file():
        if (root / REFS_FILE).is_file() or (root / "rrsisd" / REFS_FILE).is_file():
            raise DatasetFormatError(f"{root} looks like an RRSIS-D tree: use 'rrsis-d:{root}'")
        if any((root / PHRASE_FILE.format(split=s)).is_file() for s in SPLITS):
            raise DatasetFormatError(f"{root} looks like a RefSegRS/RISBench tree: use 'refsegrs:{root}'")
    return read_interchange(root, split)


def write_samples(samples: Iterable[Sample], spec: str) -> Path:
    """Write samples in the layout named by `spec` (same prefixes as `load_samples`; plain PATH = interchange)."""
    kind, path = _split_spec(spec)
    if kind in ("rrsis-d", "rrsisd"):
        return write_rrsisd(samples, path)
    if kind in ("refsegrs", "risbench"):
        return write_refsegrs(samples, path, layout=kind)
    return write_interchange(samples, path)
