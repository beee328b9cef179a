"""Typed configuration of a RefSeg model: dual-modal encoder, prompter, SAM, loss.

A `RefSegConfig` is plain data (JSON round-trips through `to_dict`/`from_dict`); `build.py` maps preset names
to configs and turns a config into a model. Checkpoints store this config next to their weights.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# Version string of the checkpoint format written by `checkpoint.save_checkpoint`.
CHECKPOINT_FORMAT = "refseg-ckpt/1"


@dataclass
class EncoderConfig:
    """The CLIP/SigLIP dual-modal encoder.

    Either `pretrained` names a hub model or a local `save_pretrained` directory, or `hf_config` holds a
    transformers config dict from which a randomly initialised model is built (tiny/demo presets, trained
    from scratch; then the checkpoint carries all its weights).
    """

    kind: str = "clip"  # "clip" (CLIPModel) | "siglip" (SiglipModel; SigLIP 2 fixed-resolution checkpoints too)
    pretrained: Optional[str] = None
    hf_config: Optional[Dict[str, Any]] = None
    tokenizer: Optional[str] = None  # hub name / dir / "builtin:clip-bpe-8k"; default: `pretrained`
    max_text_length: int = 64
    image_mean: Optional[Tuple[float, float, float]] = None  # default: the image processor's, else by kind
    image_std: Optional[Tuple[float, float, float]] = None
    freeze: bool = True  # freeze the towers (LoRA adapters, if any, stay trainable)
    lora_rank: int = 0


@dataclass
class SamConfig:
    """The segmenter: SAM's image encoder, prompt encoder and mask decoder, in one of two kinds.

    kind "sam":  segment-anything v1 (ViT image encoder); `checkpoint` is an official `sam_vit_{b,l,h}_*.pth`
                 file (or a .safetensors of the same state dict). `patch_size` is the ViT patch size.
    kind "sam2": SAM 2 / 2.1 through Meta's `sam2` package (Hiera trunk + FPN neck, high-resolution decoder
                 features, `no_mem_embed`); `checkpoint` is an official `sam2.1_hiera_*.pt` file
                 ({"model": state_dict}). `hiera` holds the trunk's arguments (the `image_encoder.trunk` section
                 of sam2's configs/sam2.1/*.yaml, see `modeling.sam2_segmenter.sam2_variant`); `patch_size` is
                 the stride of the image embedding (16: Hiera's stride-32 level is dropped, `scalp`=1).
    The ViT fields (encoder_*, window_size) apply to "sam" only, the Hiera/FPN/stability fields to "sam2" only;
    the prompt encoder / mask decoder fields apply to both.
    """

    kind: str = "sam"  # "sam" | "sam2"
    checkpoint: Optional[str] = None
    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: List[int] = field(default_factory=lambda: [2, 5, 8, 11])
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    freeze_image_encoder: bool = True
    lora_rank: int = 0
    # --- kind "sam2" only
    hiera: Optional[Dict[str, Any]] = None  # kwargs of sam2's Hiera trunk (plain numbers and lists)
    fpn_top_down_levels: List[int] = field(default_factory=lambda: [2, 3])
    fpn_interp_model: str = "nearest"
    scalp: int = 1
    # SAM 2's `dynamic_multimask_via_stability`, on in RSRefSeg 2 (build_sam2's apply_postprocessing): at eval,
    # the single-mask output is replaced by the best-IoU multimask output when its stability is below thresh.
    multimask_via_stability: bool = True
    stability_delta: float = 0.05
    stability_thresh: float = 0.98

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class PrompterConfig:
    """The cascaded second-order prompter (model.md §1.4); dims of the towers are filled in by the builder."""

    num_queries: int = 3
    num_prompts: int = 9
    attn_dim: int = 512
    num_heads: int = 8
    mlp_dim: int = 512
    query_layers: int = 2
    stage1_layers: int = 2
    stage2_layers: int = 2
    # "pre": upsample the refined feature map, then take cosine similarity with the text (the paper's 'preup');
    # "post": cosine similarity at grid resolution, then upsample the logits (much cheaper on CPU).
    dense_upsample: str = "pre"


@dataclass
class LossConfig:
    """Loss weights: 5 BCE + 5 Dice + 0.5 orthogonality + 0.5 region-text contrastive (the paper's), plus an
    optional BCE on the dense similarity prompt (off in the paper; useful when the encoders train from scratch)."""

    bce: float = 5.0
    dice: float = 5.0
    orthogonality: float = 0.5
    contrastive: float = 0.5
    dense: float = 0.0


@dataclass
class RefSegConfig:
    name: str = "custom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    prompter: PrompterConfig = field(default_factory=PrompterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mask_threshold: float = 0.0  # on logits, i.e. sigmoid > 0.5
    # On a corrective click with an expression: how the previous mask's low-res logits meet the text's dense
    # prompt, "add" (summed in logit space) or "replace" (SAM/RITM style); see RefSegModel.decode_interactive.
    interactive_dense: str = "add"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RefSegConfig":
        def sub(klass, key):
            values = dict(d.get(key) or {})
            known = {f.name for f in dataclasses.fields(klass)}
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"unknown {key} config keys: {sorted(unknown)}")
            for k, v in list(values.items()):
                if isinstance(v, list) and k in ("image_mean", "image_std"):
                    values[k] = tuple(v)
            return klass(**values)

        return cls(
            name=d.get("name", "custom"),
            encoder=sub(EncoderConfig, "encoder"),
            sam=sub(SamConfig, "sam"),
            prompter=sub(PrompterConfig, "prompter"),
            loss=sub(LossConfig, "loss"),
            mask_threshold=float(d.get("mask_threshold", 0.0)),
            interactive_dense=str(d.get("interactive_dense", "add")),
        )
