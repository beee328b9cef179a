"""tifffile with the codecs we rely on.

`tifffile_module()` imports tifffile (a pinned dependency; ImageLoadError if it is missing) and, when the optional
`imagecodecs` package is absent, registers `lzw_decode`, a pure-Python TIFF LZW decoder, since tifffile alone ships
only zlib / lzma / PackBits. Used by the GeoTIFF reader and writer.
"""
from __future__ import annotations

from typing import Any, List, Optional

from formats.image_source import ImageLoadError


def tifffile_module():
    """The tifffile module, with an LZW decoder registered when imagecodecs is absent."""
    try:
        import tifffile
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise ImageLoadError("GeoTIFF support needs the 'tifffile' package (pip install tifffile)") from exc
    _register_lzw(tifffile)
    return tifffile


def lzw_decode(data: bytes, out: Any = None) -> bytes:
    """Decode TIFF LZW (MSB-first codes, 'early change' code-width switch), as in TIFF 6.0 section 13.

    A pure-Python fallback used only when the optional `imagecodecs` package is absent (tifffile then has no LZW
    codec); a few MB/s, enough for tiles and windows.
    """
    table: List[bytes] = [bytes([i]) for i in range(256)] + [b"", b""]
    result = bytearray()
    bitbuf = nbits = 0
    width = 9
    prev: Optional[bytes] = None
    for byte in bytes(data):
        bitbuf = (bitbuf << 8) | byte
        nbits += 8
        while nbits >= width:
            nbits -= width
            code = (bitbuf >> nbits) & ((1 << width) - 1)
            bitbuf &= (1 << nbits) - 1
            if code == 256:  # clear
                del table[258:]
                width, prev = 9, None
                continue
            if code == 257:  # end of information
                return bytes(result)
            if prev is None:
                if code >= 256:
                    raise ValueError(f"invalid LZW code {code} after a clear code")
                entry = table[code]
            else:
                if code < len(table):
                    entry = table[code]
                    table.append(prev + entry[:1])
                elif code == len(table):
                    entry = prev + prev[:1]
                    table.append(entry)
                else:
                    raise ValueError(f"invalid LZW code {code} (table has {len(table)} entries)")
                if len(table) + 1 >= (1 << width) and width < 12:
                    width += 1
            result += entry
            prev = entry
    return bytes(result)


_LZW_REGISTERED = False


def _register_lzw(tifffile) -> None:
    """Give tifffile an LZW decoder when imagecodecs is missing (tifffile only ships zlib/lzma/packbits)."""
    global _LZW_REGISTERED
    if _LZW_REGISTERED:
        return
    _LZW_REGISTERED = True
    try:
        import imagecodecs  # noqa: F401  (tifffile uses it, with a fast LZW)

        return
    except ImportError:
        pass
    codecs = getattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", None)
    if isinstance(codecs, dict):
        codecs.setdefault(5, lzw_decode)
