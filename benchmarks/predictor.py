"""Benchmark: predictor latency on a new image (cold) vs a new expression on a cached image (warm).

Two architectures, built with random weights from configs (no downloads; timing does not depend on the weights):
  clip-vit-b16+sam-vit-b            CLIP ViT-B/16 at 224 px with LoRA + SAM 1 ViT-B at 1024 px (the default)
  siglip2-base-256+sam2.1-hiera-b+  SigLIP 2 B/16 at 256 px with LoRA + SAM 2.1 Hiera-B+ at 1024 px (sizes from the
                                    sam2 package's sam2.1_hiera_b+.yaml), LoRA on Hiera and the FPN neck
both with the default prompter. The tokenizer is the shipped 8k CLIP BPE (the real towers have their own
vocabularies: CLIP 49k, SigLIP 2 256k; text cost differs only in the embedding lookup).

    cold: image preprocessing + SAM image encoder (SAM 2: + FPN, conv_s0/conv_s1) + vision tower
          + text tower + prompter + mask decoder
    warm: text tower + prompter + mask decoder (the image embedding, and SAM 2's high-resolution features,
          come from the predictor's cache)

    click: SAM prompt encoder + mask decoder only (clicks on a cached image whose expression's prompter output
          is cached too; each click request carries all clicks so far and gets the previous answer as mask input,
          `RefSegPredictor.predict_sequence`, as the workers answer Label Studio's smart tools)

Cold and warm calls are interleaved (each new image is followed by new expressions on it, then clicks), so all
see the same machine conditions. Target: warm >= 20x faster than cold on CPU; click >= 20x faster than cold
(issue 10). `--preset demo` times the shipped demo checkpoint instead of a random-weight architecture.

Run:  PYTHONPATH=. python benchmarks/predictor.py [--preset NAME] [--images 3] [--expressions 4] [--threads N]
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


# Tower configs of each benchmarked preset (transformers configs of the hub models, 8k builtin vocabulary).
TOWERS = {
    # openai/clip-vit-base-patch16: transformers' CLIPConfig defaults are ViT-B/32; B/16 differs in patch size only
    "clip-vit-b16+sam-vit-b": dict(
        model_type="clip",
        projection_dim=512,
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77),
        vision_config=dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12),
    ),
    # google/siglip2-base-patch16-256 (fixed resolution: a SiglipModel)
    "siglip2-base-256+sam2.1-hiera-b+": dict(
        model_type="siglip",
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=64, projection_size=768),
        vision_config=dict(image_size=256, patch_size=16, hidden_size=768, intermediate_size=3072,
                           num_hidden_layers=12, num_attention_heads=12),
    ),
}


def build(preset: str = "clip-vit-b16+sam-vit-b"):
    """The preset's architecture with random weights (towers from configs instead of hub / SAM files)."""
    if preset == "demo":
        from refseg_model.checkpoint import load_model

        model, _ = load_model("demo")
        return model.eval(), model.cfg
    from refseg_model.build import _VOCAB, BUILTIN_TOKENIZER, build_model, preset_config

    cfg = copy.deepcopy(preset_config(preset))
    towers = copy.deepcopy(TOWERS[preset])
    towers["text_config"].update(_VOCAB)
    cfg.encoder.hf_config = towers
    cfg.encoder.pretrained = None
    cfg.encoder.tokenizer = BUILTIN_TOKENIZER
    cfg.sam.checkpoint = None  # the SAM variant's sizes stay; weights random
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="clip-vit-b16+sam-vit-b", choices=sorted(TOWERS) + ["demo"])
    ap.add_argument("--images", type=int, default=3, help="cold calls (one new image each)")
    ap.add_argument("--expressions", type=int, default=4, help="warm calls per image (new expressions)")
    ap.add_argument("--clicks", type=int, default=3, help="click calls per image, after the warm calls")
    ap.add_argument("--size", type=int, default=800, help="side of the square test images (RRSIS-D: 800)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from refseg_model.predictor import RefSegPredictor

    t0 = time.perf_counter()
    model, cfg = build(args.preset)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    pred = RefSegPredictor(model, device="cpu", cache_size=args.images + 1)
    print(f"torch {torch.__version__}, device cpu, {torch.get_num_threads()} threads "
          f"(os.cpu_count={__import__('os').cpu_count()})")
    sam = "SAM 2.1 Hiera" if cfg.sam.kind == "sam2" else "SAM 1 ViT"
    weights = "shipped weights" if args.preset == "demo" else "random weights"
    print(f"model: {cfg.name} architecture, {weights}, {n_params / 1e6:.1f} M parameters "
          f"({sam} {cfg.sam.image_size}px, {cfg.encoder.kind} tower {model.encoder.image_size}px, "
          f"LoRA r={cfg.encoder.lora_rank}/{cfg.sam.lora_rank}); built in {build_s:.1f} s")
    print(f"images {args.size}x{args.size} RGB; {args.images} cold calls, {args.expressions} warm calls after each")

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images + 1)]
    # untimed warm-up (first-call allocations, lazy init)
    pred.predict(images[-1], EXPRESSIONS[-1])
    pred.predict(images[-1], EXPRESSIONS[-2])

    # wall-clock latency, and the process's CPU time (all threads) as a cross-check on a busy machine
    cold, warm, cold_cpu, warm_cpu = [], [], [], []
    click, click_cpu = [], []

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
        expr = EXPRESSIONS[i % len(EXPRESSIONS)]
        pred.predict_sequence(image, expr, [], None)  # the expression's interactive answer (caches its prompts)
        points = []
        for c in range(args.clicks):
            points.append((float(rng.integers(0, args.size)), float(rng.integers(0, args.size)), c % 2 == 0))
            t, cpu = time.perf_counter(), time.process_time()
            p = pred.predict_sequence(image, expr, list(points), None)
            click.append(time.perf_counter() - t)
            click_cpu.append(time.process_time() - cpu)
            assert p.mask.shape == image.shape[:2]
        print(f"  image {i}: cold {cold[-1] * 1e3:8.1f} ms | warm " +
              " ".join(f"{w * 1e3:.1f}" for w in warm[-args.expressions:]) + " ms | click " +
              " ".join(f"{w * 1e3:.1f}" for w in click[-args.clicks:]) + " ms", flush=True)
    hits, misses = pred.cache.hits - hits0, pred.cache.misses - misses0
    # every warm call and every click was a cache hit (predict_sequence looks the image up once per request,
    # plus the expression's first interactive answer)
    assert misses == len(cold), (misses, hits)

    med = statistics.median
    print(f"cold (new image)              median {med(cold) * 1e3:9.1f} ms wall, {med(cold_cpu) * 1e3:9.1f} ms CPU "
          f"(min wall {min(cold) * 1e3:.1f}, n={len(cold)})")
    print(f"warm (new expression, cached) median {med(warm) * 1e3:9.1f} ms wall, {med(warm_cpu) * 1e3:9.1f} ms CPU "
          f"(min wall {min(warm) * 1e3:.1f}, n={len(warm)})")
    ratio = med(cold) / med(warm)
    print(f"ratio cold / warm: {ratio:.1f}x wall, {med(cold_cpu) / med(warm_cpu):.1f}x CPU time "
          f"(target >= 20x: {'met' if ratio >= 20 else 'NOT met'})")
    if click:
        print(f"click (cached image + text)   median {med(click) * 1e3:9.1f} ms wall, {med(click_cpu) * 1e3:9.1f} ms "
              f"CPU (min wall {min(click) * 1e3:.1f}, n={len(click)})")
        r = med(cold) / med(click)
        print(f"ratio cold / click: {r:.1f}x wall, {med(cold_cpu) / med(click_cpu):.1f}x CPU time "
              f"(target >= 20x: {'met' if r >= 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
