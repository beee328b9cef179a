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
