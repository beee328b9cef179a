"""Every data set layout by name: `load_samples` / `write_samples` over a "layout:PATH" spec.

`load_samples("rrsis-d:PATH" | "rrsisd:PATH" | "refsegrs:PATH" | "risbench:PATH" | "interchange:PATH" | "PATH")`
dispatches on the prefix (formats.datasets.rrsisd, .refsegrs, .interchange); a plain path is the interchange
layout, and a plain path to a tree of another layout is refused with the spec to use. `write_samples` is the
inverse.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from formats.datasets.interchange import read_interchange, write_interchange
from formats.datasets.refsegrs import PHRASE_FILE, read_refsegrs, write_refsegrs
from formats.datasets.rrsisd import REFS_FILE, read_rrsisd, write_rrsisd
from formats.datasets.sample import SPLITS, DatasetFormatError, PathLike, Sample, check_split

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
    check_split(split)
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
