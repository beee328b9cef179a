"""Label Studio brush-mask codec ("brush RLE"), numpy only.

Label Studio stores a brush region as ``value.rle``: a list of ints 0..255,
i.e. the bytes of a bit stream.  Bits are read most-significant-bit first
within each byte.  The stream encodes a flat array of *num* "words" which, for
brush masks, is the RGBA image of the mask: ``num == height * width * 4`` and
word ``4 * (y * width + x) + c`` is channel ``c`` of pixel ``(y, x)``.  The
mask is the alpha channel (``c == 3``) being non-zero.

Header (53 bits)
    * 32 bits: *num*, the number of words in the decoded array;
    * 5 bits: word size minus one (the SDK writes 7, i.e. 8-bit words);
    * 4 x 4 bits: the four "run-length field" sizes minus one.  The SDK
      writes sizes 3, 4, 8 and 16 bits.

Tokens (repeated until *num* words have been produced)
    * 1 bit ``x``: 1 = a repeated run, 0 = a run of literal words;
    * 2 bits: index ``k`` into the four field sizes;
    * ``size[k]`` bits: ``n``; the token covers ``n + 1`` words;
    * if ``x == 1``: one word, repeated ``n + 1`` times;
      if ``x == 0``: ``n + 1`` words, one after the other.

Padding
    The stream is padded with zero bits to a whole number of bytes; the SDK
    always appends between 1 and 8 zero bits, so a stream whose length is
    already a multiple of 8 still gets a whole extra zero byte.

How the SDK encoder (``label_studio_sdk.converter.brush.mask2rle``) writes a
0/255 mask, reproduced bit for bit by :func:`mask_to_rle`:
every pixel is repeated into 4 equal bytes, so a run of ``r`` equal mask
pixels (row-major order, runs continue across row ends) is a run of
``L = 4 * r`` equal bytes.  Each run becomes repeated-run tokens (``x == 1``;
literal tokens are never written because ``L >= 4``), with value 0 or 255:

    * ``L <= 8``        -> index 0, 3-bit field ``L - 1``   (14-bit token)
    * ``8 < L <= 16``   -> index 1, 4-bit field ``L - 1``   (15 bits)
    * ``16 < L <= 256`` -> index 2, 8-bit field ``L - 1``   (19 bits)
    * ``L > 256``       -> index 3, 16-bit field: first, while more than
      65536 bytes remain, tokens of 65536 bytes (field 65535); then one token
      for the rest, ``1..65536`` bytes, still with the 16-bit field
      (27 bits each).

:func:`rle_to_mask` decodes the general format (any word size 1..32, any
field sizes, literal runs), as produced by the SDK or the Label Studio
front end, and validates it strictly.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np

__all__ = ["mask_to_rle", "rle_to_mask", "brush_region"]

_HEADER_BITS = 53
# SDK header after the 32-bit length: word size 8 (7), sizes 3, 4, 8, 16 (-1 each).
_HEADER_TAIL = (7 << 16) | (2 << 12) | (3 << 8) | (7 << 4) | 15
_MAX_CHUNK = 65536  # bytes covered by one 16-bit-field token
_RUNS_PER_CHUNK = 1 << 18  # runs turned into bits at a time (bounds temporaries)
_RUN_BLOCK = 1 << 18  # pixels compared per block (keeps temporaries in cache)


# --------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths (int64) and values (bool) of ``flat != 0``, ``flat`` 1-D.

    Works block by block so that no full-size temporary is made, whatever the
    dtype.
    """
    n = flat.size
    is_bool = flat.dtype == np.bool_
    if is_bool:
        change = [_bool_change_points(flat)]
    else:
        ne = np.empty(min(_RUN_BLOCK, max(n - 1, 0)), dtype=bool)
        change = []
        for a in range(0, n - 1, _RUN_BLOCK):
            b = min(a + _RUN_BLOCK, n - 1)
            cur = flat[a : b + 1] != 0
            np.not_equal(cur[1:], cur[:-1], out=ne[: b - a])
            change.append(np.flatnonzero(ne[: b - a]) + (a + 1))
    bounds = np.concatenate([[0], *change, [n]]).astype(np.int64, copy=False)
    starts = bounds[:-1]
    values = flat[starts] if is_bool else flat[starts] != 0
    return np.diff(bounds), values


def _bool_change_points(flat: np.ndarray) -> np.ndarray:
    """Sorted positions i (1 <= i < n) where ``flat[i] != flat[i - 1]``, for a 1-D bool array.

    Scans the mask packed 8 pixels per byte (an eighth of the memory traffic of a
    pixel-wise compare): only bytes that are neither 0x00 nor 0xFF hold a change,
    plus byte boundaries where the last bit of one byte differs from the first of
    the next.
    """
    n = flat.size
    packed = np.packbits(flat)  # the last byte is padded with zeros: changes at >= n are dropped below
    mixed = np.flatnonzero((packed != 0) & (packed != 255))
    bits = np.unpackbits(packed[mixed]).reshape(-1, 8)
    row, col = np.nonzero(bits[:, 1:] != bits[:, :-1])
    inside = mixed[row].astype(np.int64) * 8 + col + 1
    across = (np.flatnonzero((packed[:-1] & 1) != (packed[1:] >> 7)).astype(np.int64) + 1) * 8
    points = np.concatenate([inside, across])
    points.sort()
    return points[points < n]


def _tokens(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token codes (uint64) and bit widths (int64) for runs of ``lengths`` bytes."""
    val = values.astype(np.uint64) * np.uint64(255)
    nbytes = lengths.astype(np.uint64)
    long_ = lengths > 256
    # Number of tokens per run: 1, or ceil(L / 65536) for runs over 256 bytes.
    ntok = np.where(long_, (lengths - 1) // _MAX_CHUNK + 1, 1)
    last_len = nbytes - (ntok.astype(np.uint64) - np.uint64(1)) * np.uint64(_MAX_CHUNK)
    # Code of the last (or only) token of each run.
    idx = np.select([lengths <= 8, lengths <= 16, lengths <= 256], [0, 1, 2], 3)
    field = np.array([3, 4, 8, 16], dtype=np.int64)[idx]
    width = 11 + field  # 1 + 2 + field + 8
    code = (
        (np.uint64(1) << (width - 1).astype(np.uint64))
        | (idx.astype(np.uint64) << (field + 8).astype(np.uint64))
        | ((last_len - np.uint64(1)) << np.uint64(8))
        | val
    )
    if not long_.any():
        return code, width
    full = np.uint64((1 << 26) | (3 << 24) | (0xFFFF << 8)) | val
    tok_code = np.repeat(full, ntok)
    tok_width = np.repeat(width, ntok)
    last = np.cumsum(ntok) - 1
    tok_code[last] = code
    return tok_code, tok_width


def _or_into(words: np.ndarray, code: np.ndarray, width: np.ndarray, start_bit: int) -> int:
    """OR the bit fields MSB-first into big-endian uint64 ``words`` from ``start_bit``.

    Returns the bit offset just past the last field.
    """
    ends = np.cumsum(width) + start_bit
    offs = ends - width
    word = offs >> 6
    end_in_word = (offs & 63) + width  # 1..90
    spill = end_in_word > 64
    shift = (64 - end_in_word).clip(0).astype(np.uint64)
    part = code << shift
    part[spill] = code[spill] >> (end_in_word[spill] - 64).astype(np.uint64)
    # Fields are in bit order, so ``word`` is non-decreasing: OR-reduce per word.
    first = np.flatnonzero(np.diff(word, prepend=-1))
    words[word[first]] |= np.bitwise_or.reduceat(part, first)
    if spill.any():
        # At most one field crosses each word boundary: indices are unique.
        sw = word[spill] + 1
        words[sw] |= code[spill] << (128 - end_in_word[spill]).astype(np.uint64)
    return int(ends[-1]) if ends.size else start_bit


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Encode an HxW mask (non-zero = on) as Label Studio brush RLE.

    The result is identical to the SDK's
    ``label_studio_sdk.converter.brush.mask2rle((mask != 0).astype(np.uint8) * 255)``,
    computed with numpy (runs from the mask itself, since the SDK's 4x-repeated
    RGBA bytes have the same runs, 4x longer) instead of per-run string work.
    Raises ``ValueError`` for a non-2-D, empty, non-numeric or too-large mask
    (``H * W * 4`` must fit the 32-bit length field).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype.kind not in "biuf":
        raise ValueError(f"mask must be bool or numeric, got dtype {mask.dtype}")
    h, w = mask.shape
    if h == 0 or w == 0:
        raise ValueError(f"mask must not be empty, got shape {mask.shape}")
    num = h * w * 4
    if num >= 1 << 32:
        raise ValueError(f"mask {h}x{w} too large: brush RLE length is a 32-bit field")

    lengths, values = _runs(mask.reshape(-1))
    lengths = lengths * 4  # runs in the RGBA byte stream
    # Upper bound on bits: header + 27 bits per token (+ one spare word).
    max_tokens = int(lengths.size + (lengths // _MAX_CHUNK).sum())
    words = np.zeros((_HEADER_BITS + 27 * max_tokens) // 64 + 2, dtype=np.uint64)
    words[0] = np.uint64(((num << 21) | _HEADER_TAIL) << 11)
    bit = _HEADER_BITS
    step = _RUNS_PER_CHUNK
    for s in range(0, lengths.size, step):
        code, width = _tokens(lengths[s : s + step], values[s : s + step])
        bit = _or_into(words, code, width, bit)
    nbytes = bit // 8 + 1  # the SDK always pads with 1..8 zero bits
    return words.astype(">u8").view(np.uint8)[:nbytes].tolist()


# --------------------------------------------------------------------------
# decoder
# --------------------------------------------------------------------------

_WINDOW_CHUNK = 1 << 16  # bytes of 64-bit windows materialised at a time


def _as_byte_array(rle: Sequence[int]) -> np.ndarray:
    if isinstance(rle, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(rle), dtype=np.uint8)
    if isinstance(rle, (str, dict)) or not isinstance(rle, (Sequence, np.ndarray)):
        raise ValueError(f"rle must be a sequence of ints 0..255, got {type(rle).__name__}")
    try:
        arr = np.asarray(rle)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"rle must be a sequence of ints 0..255: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"rle must be a flat sequence of ints, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "O" and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr
        ):
            pass  # e.g. ints too big for int64; range-checked below
        else:
            raise ValueError(f"rle must contain ints only, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError("rle values must be bytes in 0..255")
    return arr.astype(np.uint8)


def _windows(data: np.ndarray, start: int, stop: int) -> list[int]:
    """Big-endian 64-bit integers starting at each byte ``start..stop-1``."""
    seg = np.zeros(stop - start + 8, dtype=np.uint64)
    chunk = data[start : stop + 7]
    seg[: chunk.size] = chunk
    n = stop - start
    win = np.zeros(n, dtype=np.uint64)
    for k in range(8):
        win |= seg[k : k + n] << np.uint64(56 - 8 * k)
    return win.tolist()


def _window_chunk(data: np.ndarray, b: int, decoded: int, num: int) -> tuple[int, int, list[int]]:
    """The next chunk of 64-bit windows, starting at byte `b`: (first byte, one past the last, windows).
    The decoder refills from here once per `_WINDOW_CHUNK` bytes; a `b` past the data is a truncated stream."""
    nbytes = int(data.size)
    if b >= nbytes:
        raise ValueError(f"rle truncated: decoded {decoded} of {num} values")
    limit = min(b + _WINDOW_CHUNK, nbytes)
    return b, limit, _windows(data, b, limit)


def rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Decode Label Studio brush RLE into an HxW bool mask (alpha channel > 0).

    Equal to ``decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 0`` from the SDK on
    valid input.  Raises ``ValueError`` on anything malformed: non-byte
    values, a header shorter than 53 bits, a declared length other than
    ``height * width * 4`` (checked before any allocation), a stream that ends
    before the declared length is decoded, or a run past the declared length.
    Bytes after the last token are ignored (as the SDK does).
    """
    if isinstance(height, bool) or isinstance(width, bool):
        raise ValueError("height and width must be ints")
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError):
        raise ValueError(f"height and width must be ints, got {height!r}, {width!r}") from None
    if h != height or w != width or h <= 0 or w <= 0:
        raise ValueError(f"height and width must be positive ints, got {height!r}, {width!r}")
    data = _as_byte_array(rle)
    nbytes = int(data.size)
    nbits = nbytes * 8
    if nbits < _HEADER_BITS:
        raise ValueError(f"rle too short: {nbytes} bytes, the header alone needs 7")

    head = int.from_bytes(data[:7].tobytes(), "big") >> 3  # 53 bits
    num = head >> 21
    expected = h * w * 4
    if num != expected:
        raise ValueError(
            f"rle declares {num} values but a {h}x{w} RGBA mask has {expected}"
        )
    word_size = ((head >> 16) & 31) + 1
    sizes = [((head >> (12 - 4 * k)) & 15) + 1 for k in range(4)]
    wmask = (1 << word_size) - 1

    starts: list[int] = []  # start word index of each segment
    ons: list[bool] = []  # whether the segment's word is non-zero
    add_start = starts.append
    add_on = ons.append

    p = _HEADER_BITS  # bit position
    i = 0  # words produced
    base = 0  # first byte of the current window chunk
    win: list[int] = []
    limit = 0  # one past the last byte covered by ``win``
    while i < num:
        b = p >> 3
        if b >= limit:
            base, limit, win = _window_chunk(data, b, i, num)
        rem = 64 - (p & 7)  # bits of the window from p onwards
        v = win[b - base]
        rep = (v >> (rem - 1)) & 1
        size = sizes[(v >> (rem - 3)) & 3]
        rem -= 3 + size
        j = i + 1 + ((v >> rem) & ((1 << size) - 1))
        if j > num:
            raise ValueError(f"rle run ends at value {j}, past the declared {num}")
        p += 3 + size
        if rep:
            add_start(i)
            add_on(((v >> (rem - word_size)) & wmask) != 0)
            p += word_size
            i = j
        else:
            while i < j:
                b = p >> 3
                if b >= limit:
                    base, limit, win = _window_chunk(data, b, i, num)
                add_start(i)
                add_on(((win[b - base] >> (64 - (p & 7) - word_size)) & wmask) != 0)
                p += word_size
                i += 1
    if p > nbits:
        raise ValueError(f"rle truncated: the last run needs {p} bits, got {nbits}")

    st = np.asarray(starts, dtype=np.int64)
    en = np.empty_like(st)
    en[:-1] = st[1:]
    en[-1:] = num
    # Word k is the alpha of pixel k // 4 iff k % 4 == 3; words [s, e) hold
    # the alphas of pixels [s // 4, e // 4).
    counts = en // 4 - st // 4
    return np.repeat(np.asarray(ons, dtype=bool), counts).reshape(h, w)


# --------------------------------------------------------------------------
# Label Studio result
# --------------------------------------------------------------------------


def brush_region(
    mask: np.ndarray,
    *,
    from_name: str,
    to_name: str,
    label: str,
    region_id: str | None = None,
) -> dict:
    """A Label Studio ``brushlabels`` result dict holding ``mask`` as brush RLE."""
    mask = np.asarray(mask)
    rle = mask_to_rle(mask)
    h, w = mask.shape
    return {
        "id": region_id if region_id is not None else uuid.uuid4().hex[:10],
        "from_name": from_name,
        "to_name": to_name,
        "type": "brushlabels",
        "original_width": int(w),
        "original_height": int(h),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
    }
