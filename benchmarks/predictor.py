"""Benchmark: predictor latency on a new image (cold) vs a new expression on a cached image (warm).

The architecture is the `clip-vit-b16+sam-vit-b` preset's (CLIP ViT-B/16 at 224 px with LoRA, SAM ViT-B at
1024 px, the default prompter), built with random weights from configs: no downloads, and timing does not
depend on the weights. The tokenizer is the shipped 8k CLIP BPE (the real preset uses CLIP's own 49k vocabulary;
text cost differs only in the embedding lookup).

    cold: image preprocessing + SAM image encoder + CLIP vision tower + text tower + prompter + mask decoder
    warm: text tower + prompter + mask decoder (the image embedding comes from the predictor's cache)

Cold and warm calls are interleaved (each new image is followed by new expressions on it), so both see the
same machine conditions. Target: warm >= 20x faster than cold on CPU.

Run:  PYTHONPATH=. python benchmarks/predictor.py [--images 3] [--expressions 4] [--threads N]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

EXPRESSIONS = [
    "the white storage tank left of the road",
    "the large red building at the top",
    "two small cars near the pond",
    "the tennis court in the lower right corner",
    "the green field below the long road",
    "the biggest grey building",
    "vehicles parked next to the warehouse",
    "the round pond in the middle",
]


def build(preset: str = "clip-vit-b16+sam-vit-b"):
    """The preset's architecture with random weights (towers from configs instead of hub / SAM files)."""
    from refseg_model.build import _VOCAB, BUILTIN_TOKENIZER, build_model, preset_config

    cfg = copy.deepcopy(preset_config(preset))
    # openai/clip-vit-base-patch16: transformers' CLIPConfig defaults are ViT-B/32; B/16 differs in patch size only
    cfg.encoder.hf_config = dict(
        model_type="clip",
        projection_dim=512,
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, **_VOCAB),
        vision_config=dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12),
    )
    cfg.encoder.pretrained = None
    cfg.encoder.tokenizer = BUILTIN_TOKENIZER
    cfg.sam.checkpoint = None  # SAM ViT-B sizes (SAM_VARIANTS["vit_b"]) stay; weights random
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3, help="cold calls (one new image each)")
    ap.add_argument("--expressions", type=int, default=4, help="warm calls per image (new expressions)")
    ap.add_argument("--size", type=int, default=800, help="side of the square test images (RRSIS-D: 800)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from refseg_model.predictor import RefSegPredictor

    t0 = time.perf_counter()
    model, cfg = build()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    pred = RefSegPredictor(model, device="cpu", cache_size=args.images + 1)
    print(f"torch {torch.__version__}, device cpu, {torch.get_num_threads()} threads "
          f"(os.cpu_count={__import__('os').cpu_count()})")
    print(f"model: {cfg.name} architecture, random weights, {n_params / 1e6:.1f} M parameters "
          f"(SAM ViT-B {cfg.sam.image_size}px, CLIP ViT-B/16 224px, LoRA r={cfg.encoder.lora_rank}); "
          f"built in {build_s:.1f} s")
    print(f"images {args.size}x{args.size} RGB; {args.images} cold calls, {args.expressions} warm calls after each")

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images + 1)]
    # untimed warm-up (first-call allocations, lazy init)
    pred.predict(images[-1], EXPRESSIONS[-1])
    pred.predict(images[-1], EXPRESSIONS[-2])

    # wall-clock latency, and the process's CPU time (all threads) as a cross-check on a busy machine
    cold, warm, cold_cpu, warm_cpu = [], [], [], []

    def timed(image, expr, wall, cpu):
        t, c = time.perf_counter(), time.process_time()
        [p] = pred.predict(image, expr)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        assert p.mask.shape == image.shape[:2]

    hits0, misses0 = pred.cache.hits, pred.cache.misses
    for i, image in enumerate(images[:-1]):
        timed(image, EXPRESSIONS[i % len(EXPRESSIONS)], cold, cold_cpu)
        for j in range(args.expressions):
            timed(image, EXPRESSIONS[(i + 1 + j) % len(EXPRESSIONS)], warm, warm_cpu)
        print(f"  image {i}: cold {cold[-1] * 1e3:8.1f} ms | warm " +
              " ".join(f"{w * 1e3:.1f}" for w in warm[-args.expressions:]) + " ms", flush=True)
    hits, misses = pred.cache.hits - hits0, pred.cache.misses - misses0
    assert (misses, hits) == (len(cold), len(warm)), (misses, hits)  # every warm call was a cache hit

    med = statistics.median
    print(f"cold (new image)              median {med(cold) * 1e3:9.1f} ms wall, {med(cold_cpu) * 1e3:9.1f} ms CPU "
          f"(min wall {min(cold) * 1e3:.1f}, n={len(cold)})")
    print(f"warm (new expression, cached) median {med(warm) * 1e3:9.1f} ms wall, {med(warm_cpu) * 1e3:9.1f} ms CPU "
          f"(min wall {min(warm) * 1e3:.1f}, n={len(warm)})")
    ratio = med(cold) / med(warm)
    print(f"ratio cold / warm: {ratio:.1f}x wall, {med(cold_cpu) / med(warm_cpu):.1f}x CPU time "
          f"(target >= 20x: {'met' if ratio >= 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
