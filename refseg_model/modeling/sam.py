"""SAM (segment-anything v1) image encoder, prompt encoder and mask decoder, built from a `SamConfig`.

The modules are the official `segment_anything.modeling` classes, so the published checkpoints
(`sam_vit_b_01ec64.pth`, `sam_vit_l_0b3195.pth`, `sam_vit_h_4b8939.pth`) load unchanged; they are read with
`torch.load(weights_only=True)` (no code execution) or from a `.safetensors` file.

Shapes (B batch, S = image_size, e = S / patch_size, C = prompt_embed_dim):
  image  B x 3 x S x S in [0, 1]  -> embedding  B x C x e x e, high-res features () (SAM 1 has none)
  sparse B x P x C, dense mask logits B x 1 x 4e x 4e -> low-res mask logits B x 1 x 4e x 4e, IoU B x 1

The segmenter seam (shared with `sam2_segmenter.Sam2Segmenter`): `encode_image`, `embed_dense`, `decode`,
`mask_input_size`, and the submodules `image_encoder`, `prompt_encoder`, `mask_decoder`.
Unlike RSRefSeg 2's SAM 2.1 decoder, SAM 1 has no dynamic multimask-by-stability switch: we always read
mask token 0 (the single-mask output), in training and at inference alike.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn

from ..config import SamConfig
from .segmenter import Segmenter
from .weights import load_exactly, load_state_dict_file

SAM_VARIANTS: Dict[str, dict] = {
    "vit_b": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=[7, 15, 23, 31]),
}


class SamSegmenter(Segmenter):
    """SAM's three parts; the image encoder is frozen by default (optionally LoRA-tuned)."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

        self.cfg = cfg
        self.image_encoder = ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
            window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        )
        self.build_prompt_and_decoder(cfg, PromptEncoder, MaskDecoder, TwoWayTransformer)
        # SAM's pixel statistics (0-255 scale), applied to [0, 1] inputs after scaling.
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1) / 255.0, False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1) / 255.0, False)
        self.finish_init(cfg, ["qkv", "proj"])

    @property
    def mask_input_size(self) -> int:
        return 4 * self.cfg.embedding_size

    def load_official(self, path: str | Path) -> None:
        """Load an official SAM checkpoint (keys `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`)."""
        state = load_state_dict_file(path)
        # The official file carries SAM's pixel statistics (0-255 scale, shape 3x1x1); ours are fixed buffers.
        state = {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}
        load_exactly(self, state, path, "SAM")

    def encode_image(self, images01: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """images01: B x 3 x S x S in [0, 1] (padded) -> (image embedding B x C x e x e, no high-res features)."""
        return self.image_encoder((images01 - self.pixel_mean) / self.pixel_std), ()

    def decode(
        self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
        high_res: Tuple[torch.Tensor, ...] = (),
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One mask per (image, prompt set), image i paired with prompts i.

        image_embeddings B x C x e x e, sparse B x P x C, dense B x C x e x e, high_res () (SAM 1 has none)
        -> low-res mask logits B x 1 x 4e x 4e, predicted IoU B x 1.

        SAM's `MaskDecoder.predict_masks` repeats one image over all prompts (B_img = 1); here each image has
        its own prompts, so the same computation is done without the repeat, reusing the decoder's modules.
        """
        if high_res:
            raise ValueError("SAM 1 takes no high-resolution features")
        dec = self.mask_decoder
        b = sparse.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens[None].expand(b, -1, -1), sparse), dim=1)
        src = image_embeddings + dense
        pos = self.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = dec.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_token_out = hs[:, 1, :]  # token 0 of the mask tokens: the single-mask output
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = dec.output_upscaling(src)
        hyper = dec.output_hypernetworks_mlps[0](mask_token_out)  # B x C/8
        bu, cu, hu, wu = upscaled.shape
        masks = (hyper[:, None, :] @ upscaled.reshape(bu, cu, hu * wu)).reshape(bu, 1, hu, wu)
        iou = dec.iou_prediction_head(iou_token_out)[:, :1]
        return masks, iou
