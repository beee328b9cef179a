"""Preset registry and model builder.

A preset maps a name to a `RefSegConfig`:
  tiny                              random tiny towers, SAM 1 (tests)
  tiny-sam2.1                       random tiny towers, SAM 2.1 (tiny Hiera; tests)
  demo                              the shipped default: small towers trained from scratch on synthetic scenes
  clip-vit-b16+sam-vit-b            light real model: openai/clip-vit-base-patch16 + SAM ViT-B
  siglip2-so400m-512+sam-vit-l      SigLIP 2 So400m/16 @512 + SAM 1 ViT-L (not the paper's: SAM 1 in place of
                                    SAM 2.1, so no high-res decoder features, no no_mem_embed, no stability switch)
  siglip2-so400m-512+sam2.1-hiera-l the paper's (RSRefSeg 2): SigLIP 2 So400m/16 @512 + SAM 2.1 Hiera-L, LoRA r=16
  siglip2-base-256+sam2.1-hiera-b+  mid-size: SigLIP 2 B/16 @256 + SAM 2.1 Hiera-B+
  siglip2-base-224+sam2.1-hiera-t   light: SigLIP 2 B/16 @224 + SAM 2.1 Hiera-T

Real presets name hub models and official SAM files; with no network, point them at local copies: a relative
SAM checkpoint name or encoder name is looked up in `$REFSEG_WEIGHTS_DIR` (a directory holding e.g.
`sam_vit_b_01ec64.pth`, `sam2.1_hiera_large.pt` and `google/siglip2-so400m-patch16-512/` saved with
`save_pretrained`) before the hub. `expected_files(name)` lists what a preset reads.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .config import EncoderConfig, LossConfig, PrompterConfig, RefSegConfig, SamConfig

BUILTIN_TOKENIZER = "builtin:clip-bpe-8k"
_VOCAB = dict(vocab_size=8192, bos_token_id=8190, eos_token_id=8191, pad_token_id=8191)


def _tiny() -> RefSegConfig:
    clip = dict(
        model_type="clip",
        projection_dim=32,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=32, **_VOCAB),
        vision_config=dict(image_size=64, patch_size=16, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
    )
    return RefSegConfig(
        name="tiny",
        encoder=EncoderConfig(kind="clip", hf_config=clip, tokenizer=BUILTIN_TOKENIZER, max_text_length=32, freeze=False),
        sam=SamConfig(image_size=64, patch_size=8, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                      encoder_global_attn_indexes=[1], window_size=4, prompt_embed_dim=32, mask_in_chans=8,
                      decoder_depth=1, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
                      freeze_image_encoder=False),
        prompter=PrompterConfig(num_queries=3, num_prompts=4, attn_dim=32, num_heads=2, mlp_dim=64,
                                query_layers=1, stage1_layers=1, stage2_layers=1, dense_upsample="post"),
        loss=LossConfig(dense=1.0),
    )


def _demo() -> RefSegConfig:
    clip = dict(
        model_type="clip",
        projection_dim=128,
        text_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                         max_position_embeddings=32, **_VOCAB),
        vision_config=dict(image_size=128, patch_size=8, hidden_size=128, intermediate_size=256,
                           num_hidden_layers=4, num_attention_heads=4),
    )
    return RefSegConfig(
        name="demo",
        encoder=EncoderConfig(kind="clip", hf_config=clip, tokenizer=BUILTIN_TOKENIZER, max_text_length=32, freeze=False),
        # 4-pixel tokens for the SAM branch (mask detail on small vehicles); windowed attention only, since
        # global attention with SAM's decomposed relative positions costs ~3x the whole step on CPU.
        sam=SamConfig(image_size=128, patch_size=4, encoder_embed_dim=64, encoder_depth=3, encoder_num_heads=4,
                      encoder_global_attn_indexes=[], window_size=8, prompt_embed_dim=64, mask_in_chans=16,
                      decoder_depth=2, decoder_mlp_dim=256, decoder_num_heads=4, iou_head_hidden_dim=64,
                      freeze_image_encoder=False),
        prompter=PrompterConfig(num_queries=3, num_prompts=9, attn_dim=64, num_heads=4, mlp_dim=256,
                                dense_upsample="post"),
        loss=LossConfig(dense=1.0),
    )


def _sam_variant(variant: str, checkpoint: str) -> SamConfig:
    from .modeling.sam import SAM_VARIANTS

    return SamConfig(checkpoint=checkpoint, **copy.deepcopy(SAM_VARIANTS[variant]))


def _clip_b16_sam_b() -> RefSegConfig:
    return RefSegConfig(
        name="clip-vit-b16+sam-vit-b",
        encoder=EncoderConfig(kind="clip", pretrained="openai/clip-vit-base-patch16", max_text_length=77, lora_rank=16),
        sam=_sam_variant("vit_b", "sam_vit_b_01ec64.pth"),
        prompter=PrompterConfig(),
    )


def _siglip2(hub_name: str) -> EncoderConfig:
    # SigLIP 2 was trained on text padded to 64 tokens (model.md §1.3); LoRA r=16 on both towers and the text head
    return EncoderConfig(kind="siglip", pretrained=hub_name, max_text_length=64, lora_rank=16)


def _siglip2_sam_l() -> RefSegConfig:
    """SigLIP 2 + SAM 1 ViT-L: not the paper's model (SAM 2.1 Hiera-L there); kept for SAM 1 checkpoints."""
    sam = _sam_variant("vit_l", "sam_vit_l_0b3195.pth")
    sam.lora_rank = 16
    return RefSegConfig(
        name="siglip2-so400m-512+sam-vit-l",
        encoder=_siglip2("google/siglip2-so400m-patch16-512"),
        sam=sam,
        prompter=PrompterConfig(),
    )


def _sam2_variant(variant: str) -> SamConfig:
    """A published SAM 2.1 variant's SamConfig (read from the `sam2` package's config), LoRA r=16 as the paper."""
    from .modeling.sam2_segmenter import sam2_variant

    return SamConfig(lora_rank=16, **sam2_variant(variant))


def _siglip2_so400m_sam2_l() -> RefSegConfig:
    """The paper's model (RSRefSeg 2, model.md §1.1-1.2)."""
    return RefSegConfig(
        name="siglip2-so400m-512+sam2.1-hiera-l",
        encoder=_siglip2("google/siglip2-so400m-patch16-512"),
        sam=_sam2_variant("sam2.1_hiera_l"),
        prompter=PrompterConfig(),
    )


def _siglip2_b256_sam2_bplus() -> RefSegConfig:
    return RefSegConfig(
        name="siglip2-base-256+sam2.1-hiera-b+",
        encoder=_siglip2("google/siglip2-base-patch16-256"),
        sam=_sam2_variant("sam2.1_hiera_b+"),
        prompter=PrompterConfig(),
    )


def _siglip2_b224_sam2_t() -> RefSegConfig:
    return RefSegConfig(
        name="siglip2-base-224+sam2.1-hiera-t",
        encoder=_siglip2("google/siglip2-base-patch16-224"),
        sam=_sam2_variant("sam2.1_hiera_t"),
        prompter=PrompterConfig(),
    )


def _tiny_sam2() -> RefSegConfig:
    """`tiny` with a SAM 2.1 segmenter: a 4-stage Hiera of width 8 at 64 px (embedding 4x4, mask input 16x16)."""
    cfg = _tiny()
    cfg.name = "tiny-sam2.1"
    cfg.sam = SamConfig(kind="sam2", image_size=64, patch_size=16, prompt_embed_dim=32, mask_in_chans=8,
                        decoder_depth=1, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
                        hiera=dict(embed_dim=8, num_heads=1, stages=[1, 1, 2, 1], global_att_blocks=[3],
                                   window_spec=[4, 4, 4, 2], window_pos_embed_bkg_spatial_size=[4, 4]),
                        freeze_image_encoder=False)
    return cfg


PRESETS: Dict[str, Callable[[], RefSegConfig]] = {
    "tiny": _tiny,
    "tiny-sam2.1": _tiny_sam2,
    "demo": _demo,
    "clip-vit-b16+sam-vit-b": _clip_b16_sam_b,
    "siglip2-so400m-512+sam-vit-l": _siglip2_sam_l,
    "siglip2-so400m-512+sam2.1-hiera-l": _siglip2_so400m_sam2_l,
    "siglip2-base-256+sam2.1-hiera-b+": _siglip2_b256_sam2_bplus,
    "siglip2-base-224+sam2.1-hiera-t": _siglip2_b224_sam2_t,
}

# Where each kind of SAM checkpoint is published (for messages).
SAM_RELEASES = {"sam": "the segment-anything (SAM 1) release", "sam2": "Meta's SAM 2.1 release"}


def expected_files(name: str) -> List[str]:
    """What preset `name` reads from disk (or the hub), one line per file, for `refseg presets`.

    A relative SAM checkpoint and an encoder hub name are looked up in $REFSEG_WEIGHTS_DIR first.
    """
    cfg = preset_config(name)
    out = []
    if cfg.sam.checkpoint:
        out.append(f"$REFSEG_WEIGHTS_DIR/{cfg.sam.checkpoint} ({SAM_RELEASES[cfg.sam.kind]})")
    if cfg.encoder.pretrained and not cfg.encoder.pretrained.startswith("builtin:"):
        out.append(f"$REFSEG_WEIGHTS_DIR/{cfg.encoder.pretrained}/ (save_pretrained of model, tokenizer and image "
                   f"processor; else the hub)")
    if name == "demo":
        out.append(f"the shipped checkpoint {DEMO_CHECKPOINT}")
    elif not out:
        out.append("nothing (random init, trained from scratch)")
    return out


def describe_preset(name: str) -> str:
    """One line for `refseg presets`: towers, input size, and what the preset expects on disk."""
    cfg = preset_config(name)
    sam = "SAM 2.1 Hiera" if cfg.sam.kind == "sam2" else "SAM 1 ViT"
    return (f"encoder={cfg.encoder.kind}:{cfg.encoder.pretrained or 'random init'}  sam={sam}  "
            f"input={cfg.sam.image_size}px  expects: {'; '.join(expected_files(name))}")


# Where the shipped demo checkpoint lives.
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo"


def preset_config(name: str) -> RefSegConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()


def weights_dir() -> Optional[Path]:
    d = os.environ.get("REFSEG_WEIGHTS_DIR")
    return Path(d) if d else None


def resolve_weights(cfg: RefSegConfig) -> RefSegConfig:
    """Point relative SAM files and encoder names at `$REFSEG_WEIGHTS_DIR` when a local copy exists there."""
    cfg = copy.deepcopy(cfg)
    root = weights_dir()
    if cfg.sam.checkpoint and not Path(cfg.sam.checkpoint).is_absolute():
        local = (root / cfg.sam.checkpoint) if root else None
        if local is not None and local.is_file():
            cfg.sam.checkpoint = str(local)
        elif not Path(cfg.sam.checkpoint).is_file():
            raise FileNotFoundError(
                f"SAM checkpoint {cfg.sam.checkpoint!r} not found: download it from {SAM_RELEASES[cfg.sam.kind]} "
                f"and put it in $REFSEG_WEIGHTS_DIR (now {root or 'unset'}) or give an absolute path"
            )
    enc = cfg.encoder
    if enc.pretrained and root is not None and not enc.pretrained.startswith("builtin:"):
        local = root / enc.pretrained
        if local.is_dir():
            if enc.tokenizer in (None, enc.pretrained):
                enc.tokenizer = str(local)
            enc.pretrained = str(local)
    return cfg


def build_model(cfg: RefSegConfig):
    """Build a `RefSegModel` (pretrained parts loaded from their checkpoints; trainable parts freshly initialised)."""
    from .modeling.refseg import RefSegModel

    model = RefSegModel(resolve_weights(cfg))
    # Keep the config as given (relative SAM file, hub name), not the resolved local paths: a checkpoint must
    # load where $REFSEG_WEIGHTS_DIR lives elsewhere (trained in one container, served from another).
    model.cfg = copy.deepcopy(cfg)
    return model
