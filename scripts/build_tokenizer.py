"""Build the shipped CLIP BPE tokenizer (refseg_model/assets/clip-bpe-8k/) from OpenAI CLIP's BPE merges.

The merges file `bpe_simple_vocab_16e6.txt.gz` (MIT licence, OpenAI CLIP) ships inside the PyPI package
`open-clip-torch`; this script turns it into the `vocab.json` + `merges.txt` pair that
`transformers.CLIPTokenizer(Fast)` reads, exactly as CLIP's own tokenizer builds its vocabulary
(256 byte symbols, the same with an end-of-word marker, the merges in order, then the two special tokens).
We keep the first 7,678 merges (CLIP's merges are in frequency order), which gives an 8,192-token vocabulary:
still an open vocabulary (any text tokenizes, rare words into more pieces, byte fallback at worst), with an
embedding table 6x smaller than the full 49,408 tokens, which keeps the shipped demo checkpoint to a few MB.
The result is committed, so neither the package nor this script is needed at run time.

    pip install open-clip-torch==3.3.0 && python scripts/build_tokenizer.py
"""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "refseg_model" / "assets" / "clip-bpe-8k"
VOCAB_SIZE = 8192


def bytes_to_unicode() -> dict:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main() -> int:
    import open_clip  # only needed to locate the merges file

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]][: VOCAB_SIZE - 512 - 2]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=[tuple(m) for m in merges])
    tok.model_max_length = 77
    tok.save_pretrained(OUT)
    print(f"wrote {OUT} ({len(vocab)} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
