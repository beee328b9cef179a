"""SAM 2.1 (Hiera) image encoder, prompt encoder and mask decoder, built from a `SamConfig` of kind "sam2".

The modules are Meta's `sam2` package classes (PyPI `sam2`), so the published `sam2.1_hiera_{tiny,small,
base_plus,large}.pt` checkpoints ({"model": state_dict}) load unchanged. Only what a single image needs is built,
as RSRefSeg 2 does (model.md §1.1): the Hiera trunk + FPN neck, the prompt encoder, the mask decoder and
`no_mem_embed`. The checkpoint's video/memory tensors (`UNBUILT`) are dropped by name; any other key that is
missing or unexpected is an error.

Shapes (B batch, S = image_size, e = S / 16, C = prompt_embed_dim = the FPN width):
  image  B x 3 x S x S in [0, 1]
    -> Hiera + FPN levels at strides 4, 8, 16 (stride 32 dropped, scalp = 1)
    -> image embedding  B x C x e x e       (stride-16 level + no_mem_embed, as SAM 2 does for single images)
       high-res features (B x C/8 x 4e x 4e, B x C/4 x 2e x 2e)   (strides 4 and 8 through conv_s0 / conv_s1)
  sparse B x P x C, dense mask logits B x 1 x 4e x 4e (256 x 256 at S = 1024) -> dense embedding B x C x e x e
  -> low-res mask logits B x 1 x 4e x 4e, IoU B x 1

The mask decoder is called with multimask_output=False. With `multimask_via_stability` (RSRefSeg 2's setting,
from build_sam2's apply_postprocessing) the decoder, when not training, replaces the single-mask output (token 0)
by the best-IoU multimask output whenever token 0's stability score (IoU of the masks at logits > +delta and
> -delta) is below `stability_thresh`; in training token 0 is always used. The object-score output is ignored
(no object-score gating), as in RSRefSeg 2.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..config import SamConfig
from .segmenter import Segmenter
from .weights import load_exactly, load_state_dict_file

# Published SAM 2.1 variants: the config file in the `sam2` package and the checkpoint file of Meta's release.
SAM2_VARIANTS: Dict[str, Tuple[str, str]] = {
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "sam2.1_hiera_b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "sam2.1_hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}

# SAM2Base settings that decide which single-image modules exist and how they run. They are the same in all
# published SAM 2.1 configs (`sam2_variant` checks), so they are fixed here rather than configurable.
SAM2_MODEL_FLAGS: Dict[str, Any] = dict(
    directly_add_no_mem_embed=True,  # single image: no_mem_embed added to the lowest-res features
    use_high_res_features_in_sam=True,  # conv_s0 / conv_s1 + high-res features in the decoder
    iou_prediction_use_sigmoid=True,
    pred_obj_scores=True,  # the decoder has an object-score token and head (in the checkpoint; output unused)
    pred_obj_scores_mlp=True,
    use_multimask_token_for_obj_ptr=True,
)

# Checkpoint tensors of SAM2Base that belong to video tracking (memory attention/encoder, object pointers,
# temporal encodings): not built, dropped on load. Exact names, or prefixes ending in ".".
UNBUILT = (
    "memory_attention.", "memory_encoder.", "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.",
    "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial",
)
# Checkpoint prefix -> ours (our submodule names are the segmenter seam's, shared with SAM 1).
RENAMED = {"sam_prompt_encoder.": "prompt_encoder.", "sam_mask_decoder.": "mask_decoder."}

# LoRA targets (model.md §1.2): Hiera attention qkv/proj linears and the FPN neck's 1x1 convs.
LORA_TARGETS = r"^(trunk\.blocks\.\d+\.attn\.(qkv|proj)|neck\.convs\.\d+\.conv)$"


def sam2_variant(name: str) -> Dict[str, Any]:
    """The `SamConfig` fields of a published SAM 2.1 variant, read from the `sam2` package's own config file.

    name: a key of SAM2_VARIANTS -> dict(kind, checkpoint, image_size, patch_size, prompt_embed_dim, hiera,
    fpn_top_down_levels, fpn_interp_model, scalp).
    """
    import sam2
    from omegaconf import OmegaConf

    if name not in SAM2_VARIANTS:
        raise KeyError(f"unknown SAM 2.1 variant {name!r}; known: {', '.join(SAM2_VARIANTS)}")
    rel, ckpt = SAM2_VARIANTS[name]
    model = OmegaConf.to_container(OmegaConf.load(Path(sam2.__file__).parent / rel), resolve=True)["model"]
    differ = {k: model.get(k) for k, v in SAM2_MODEL_FLAGS.items() if model.get(k) != v}
    if differ:
        raise ValueError(f"{rel}: settings differ from those this segmenter builds: {differ}")
    enc = model["image_encoder"]
    trunk = {k: v for k, v in enc["trunk"].items() if k != "_target_"}
    neck = enc["neck"]
    return dict(
        kind="sam2",
        checkpoint=ckpt,
        image_size=int(model["image_size"]),
        patch_size=16,
        prompt_embed_dim=int(neck["d_model"]),
        hiera=trunk,
        fpn_top_down_levels=list(neck["fpn_top_down_levels"]),
        fpn_interp_model=str(neck["fpn_interp_model"]),
        scalp=int(enc["scalp"]),
    )


def _hiera_kwargs(cfg: SamConfig) -> Dict[str, Any]:
    """Validate `cfg.hiera` against Hiera's signature: plain architecture numbers only (no paths, no code)."""
    from sam2.modeling.backbones.hieradet import Hiera

    allowed = set(inspect.signature(Hiera.__init__).parameters) - {"self", "weights_path", "return_interm_layers"}
    hiera = dict(cfg.hiera or {})
    unknown = set(hiera) - allowed
    if unknown:
        raise ValueError(f"unknown Hiera arguments {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key in ("q_stride", "window_pos_embed_bkg_spatial_size"):
        if key in hiera:
            hiera[key] = tuple(hiera[key])
    return hiera


class Sam2Segmenter(Segmenter):
    """SAM 2.1's single-image parts; the image encoder is frozen by default (optionally LoRA-tuned)."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        from sam2.modeling.backbones.hieradet import Hiera
        from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
        from sam2.modeling.position_encoding import PositionEmbeddingSine
        from sam2.modeling.sam.mask_decoder import MaskDecoder
        from sam2.modeling.sam.prompt_encoder import PromptEncoder
        from sam2.modeling.sam.transformer import TwoWayTransformer

        if cfg.kind != "sam2":
            raise ValueError(f"Sam2Segmenter needs a SamConfig of kind 'sam2', got {cfg.kind!r}")
        self.cfg = cfg
        c = cfg.prompt_embed_dim
        trunk = Hiera(**_hiera_kwargs(cfg))
        # Hiera's levels have strides 4, 8, 16, 32 (patch stride 4, a q_stride pooling at the start of each later
        # stage); `scalp` drops the coarsest ones, so the image embedding is level (levels - 1 - scalp).
        last = trunk.stage_ends[len(trunk.stage_ends) - 1 - cfg.scalp]
        stride = 4 * trunk.q_stride[0] ** sum(1 for blk in trunk.q_pool_blocks if blk <= last)
        if cfg.patch_size != stride or cfg.image_size % (4 * stride):
            raise ValueError(f"SAM 2 config: the image embedding has stride {stride} (patch_size is "
                             f"{cfg.patch_size}), and image_size {cfg.image_size} must be a multiple of {4 * stride}")
        neck = FpnNeck(
            position_encoding=PositionEmbeddingSine(num_pos_feats=c, normalize=True, scale=None, temperature=10000,
                                                    warmup_cache=False),
            d_model=c,
            backbone_channel_list=list(trunk.channel_list),
            fpn_top_down_levels=list(cfg.fpn_top_down_levels),
            fpn_interp_model=cfg.fpn_interp_model,
        )
        self.image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=cfg.scalp)
        self.build_prompt_and_decoder(
            cfg,
            PromptEncoder,
            MaskDecoder,
            TwoWayTransformer,
            use_high_res_features=SAM2_MODEL_FLAGS["use_high_res_features_in_sam"],
            iou_prediction_use_sigmoid=SAM2_MODEL_FLAGS["iou_prediction_use_sigmoid"],
            pred_obj_scores=SAM2_MODEL_FLAGS["pred_obj_scores"],
            pred_obj_scores_mlp=SAM2_MODEL_FLAGS["pred_obj_scores_mlp"],
            use_multimask_token_for_obj_ptr=SAM2_MODEL_FLAGS["use_multimask_token_for_obj_ptr"],
            dynamic_multimask_via_stability=cfg.multimask_via_stability,
            dynamic_multimask_stability_delta=cfg.stability_delta,
            dynamic_multimask_stability_thresh=cfg.stability_thresh,
        )
        # SAM2Base's single-image "no memory" embedding (trunc-normal init, as there); 1 x 1 x C.
        self.no_mem_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, c), std=0.02))
        # ImageNet statistics on [0, 1] inputs (SAM2Transforms' normalisation).
        self.register_buffer("pixel_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), False)
        self.finish_init(cfg, LORA_TARGETS)

    @property
    def mask_input_size(self) -> int:
        """Side of the dense (mask) prompt the prompt encoder takes: 4e (256 for a 1024 input)."""
        return int(self.prompt_encoder.mask_input_size[0])

    @staticmethod
    def official_to_ours(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A published SAM2Base state dict -> this module's keys: video/memory tensors dropped, heads renamed."""
        out = {}
        for k, v in state.items():
            if any(k == u or (u.endswith(".") and k.startswith(u)) for u in UNBUILT):
                continue
            for old, new in RENAMED.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            out[k] = v
        return out

    def load_official(self, path: str | Path) -> None:
        """Load a published `sam2.1_hiera_*.pt` ({"model": state_dict}, read with weights_only=True)."""
        load_exactly(self, self.official_to_ours(load_state_dict_file(path)), path, "SAM 2")

    def encode_image(self, images01: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """images01: B x 3 x S x S in [0, 1] (padded) -> (image embedding B x C x e x e,
        high-res features (B x C/8 x 4e x 4e, B x C/4 x 2e x 2e)).

        As SAM2Base.forward_image + SAM2ImagePredictor.set_image: FPN levels 0 and 1 through the decoder's
        conv_s0 / conv_s1, and no_mem_embed added to the lowest-resolution level.
        """
        fpn = self.image_encoder((images01 - self.pixel_mean) / self.pixel_std)["backbone_fpn"]
        s0 = self.mask_decoder.conv_s0(fpn[0])
        s1 = self.mask_decoder.conv_s1(fpn[1])
        embedding = fpn[2] + self.no_mem_embed.view(1, -1, 1, 1)
        return embedding, (s0, s1)

    def decode(
        self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
        high_res: Tuple[torch.Tensor, ...] = (),
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One mask per (image, prompt set), image i paired with prompts i.

        image_embeddings B x C x e x e, sparse B x P x C, dense B x C x e x e,
        high_res (B x C/8 x 4e x 4e, B x C/4 x 2e x 2e) -> low-res mask logits B x 1 x 4e x 4e, IoU B x 1.
        """
        if len(high_res) != 2:
            raise ValueError("SAM 2 decoding needs the two high-resolution feature maps of encode_image")
        masks, iou, _, _ = self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=list(high_res),
        )
        return masks, iou
