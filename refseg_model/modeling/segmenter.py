"""What the SAM 1 and SAM 2.1 segmenters share behind the seam (encode_image, embed_dense, decode,
mask_input_size): loading order, image-encoder freezing and LoRA, and the dense-prompt embedding."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from ..config import SamConfig


class Segmenter(nn.Module):
    """Base of `SamSegmenter` and `Sam2Segmenter`; subclasses build `image_encoder`, `prompt_encoder`,
    `mask_decoder`, then call `finish_init`."""

    def build_prompt_and_decoder(self, cfg: SamConfig, prompt_encoder_cls, mask_decoder_cls, transformer_cls,
                                 **decoder_flags) -> None:
        """`prompt_encoder` and `mask_decoder` from segment-anything's or sam2's classes, which take the same
        core arguments (C = cfg.prompt_embed_dim, e = cfg.embedding_size); `decoder_flags` are the SAM 2 extras."""
        c, e = cfg.prompt_embed_dim, cfg.embedding_size
        self.prompt_encoder = prompt_encoder_cls(
            embed_dim=c,
            image_embedding_size=(e, e),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        )
        self.mask_decoder = mask_decoder_cls(
            num_multimask_outputs=3,
            transformer=transformer_cls(
                depth=cfg.decoder_depth, embedding_dim=c, mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads
            ),
            transformer_dim=c,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
            **decoder_flags,
        )

    def finish_init(self, cfg: SamConfig, lora_targets: Union[str, Sequence[str]]) -> None:
        """Published weights first (`cfg.checkpoint`), then the image encoder frozen and/or LoRA-adapted, so
        that adapters start from the loaded weights. `lora_targets`: module names or a regex, as peft takes them."""
        if cfg.checkpoint:
            self.load_official(cfg.checkpoint)
        if cfg.freeze_image_encoder:
            for p in self.image_encoder.parameters():
                p.requires_grad_(False)
        if cfg.lora_rank > 0:
            from .lora import add_lora

            add_lora(self.image_encoder, lora_targets, cfg.lora_rank)

    def load_official(self, path) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def embed_dense(self, dense_logits: torch.Tensor) -> torch.Tensor:
        """Mask-input logits B x 1 x 4e x 4e -> dense prompt embedding B x C x e x e."""
        return self.prompt_encoder._embed_masks(dense_logits)
