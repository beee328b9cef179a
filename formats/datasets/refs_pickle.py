"""RefCOCO-style refs pickles (RRSIS-D's refs(unc).p), read safely.

The pickle is untrusted: it is read with an unpickler that refuses every global (refs pickles hold only
dict/list/str/int/float, which need none), so a pickle that references a callable raises instead of running it.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Dict, List, Union

from formats.datasets.sample import DatasetFormatError, PathLike


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
