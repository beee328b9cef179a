"""The full decoupled model: dual-modal encoder -> cascaded prompter -> SAM mask decoder.

Inputs are images already resized (longest side) and zero-padded to S x S in [0, 1]; see `transforms.py`.
Image-side work (`encode_image`) is separate from text-side work (`decode`) so that the predictor can cache the
former per image and pay only for the latter per expression.

The segmenter is SAM 1 (`sam.SamSegmenter`) or SAM 2.1 (`sam2_segmenter.Sam2Segmenter`), chosen by
`cfg.sam.kind` (`SEGMENTERS`); both have the same seam (encode_image, embed_dense, decode, mask_input_size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import RefSegConfig, SamConfig
from .encoder import DualModalEncoder, TextFeatures
from .prompter import CascadedPrompter


def _sam1(cfg: SamConfig) -> nn.Module:
    from .sam import SamSegmenter

    return SamSegmenter(cfg)


def _sam2(cfg: SamConfig) -> nn.Module:
    from .sam2_segmenter import Sam2Segmenter  # imports Meta's `sam2` package only when a SAM 2 model is built

    return Sam2Segmenter(cfg)


# SamConfig.kind -> segmenter
SEGMENTERS: Dict[str, Callable[[SamConfig], nn.Module]] = {"sam": _sam1, "sam2": _sam2}


def build_segmenter(cfg: SamConfig) -> nn.Module:
    if cfg.kind not in SEGMENTERS:
        raise ValueError(f"unknown SAM kind {cfg.kind!r}; known: {', '.join(SEGMENTERS)}")
    return SEGMENTERS[cfg.kind](cfg)


@dataclass
class ImageEmbedding:
    """What the predictor caches per image: everything the per-expression decode needs from the image."""

    sam: torch.Tensor  # B x C x e x e (SAM 2: with no_mem_embed added)
    clip: torch.Tensor  # B x N x Cv
    # SAM 2's high-resolution features after conv_s0 / conv_s1: (B x C/8 x 4e x 4e, B x C/4 x 2e x 2e);
    # () for SAM 1
    sam_high_res: Tuple[torch.Tensor, ...] = field(default_factory=tuple)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ImageEmbedding":
        return ImageEmbedding(fn(self.sam), fn(self.clip), tuple(fn(t) for t in self.sam_high_res))

    def to(self, device) -> "ImageEmbedding":
        return self._map(lambda t: t.to(device))

    def index(self, idx: torch.Tensor) -> "ImageEmbedding":
        """Select/repeat images: idx LongTensor of length B'."""
        return self._map(lambda t: t[idx])

    def row(self, i: int) -> "ImageEmbedding":
        """Image i as a batch of 1."""
        return self._map(lambda t: t[i : i + 1])

    @staticmethod
    def cat(items: Sequence["ImageEmbedding"]) -> "ImageEmbedding":
        """Concatenate along the batch."""
        levels = {len(it.sam_high_res) for it in items}
        if len(levels) != 1:
            raise ValueError("cannot batch embeddings of different segmenters")
        return ImageEmbedding(
            torch.cat([it.sam for it in items]),
            torch.cat([it.clip for it in items]),
            tuple(torch.cat([it.sam_high_res[j] for it in items]) for j in range(levels.pop())),
        )


@dataclass
class RefSegOutput:
    mask_logits: torch.Tensor  # B x 1 x 4e x 4e (low-res, over the padded S x S input)
    iou_pred: torch.Tensor  # B x 1
    dense_logits: torch.Tensor  # B x 1 x 4e x 4e
    q1: torch.Tensor  # B x K x Ct
    q2: torch.Tensor  # B x K x Ct
    clip_tokens: torch.Tensor  # B x N x Cv (raw encoder map, for the region-text loss)
    text: Optional[TextFeatures] = None


class RefSegModel(nn.Module):
    def __init__(self, cfg: RefSegConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = DualModalEncoder(cfg.encoder)
        self.sam = build_segmenter(cfg.sam)
        scale, bias = self.encoder.init_logit_scale_bias()
        self.prompter = CascadedPrompter(
            cfg.prompter,
            text_dim=self.encoder.text_dim,
            vision_dim=self.encoder.vision_dim,
            embed_dim=self.encoder.embed_dim,
            prompt_dim=cfg.sam.prompt_embed_dim,
            grid=self.encoder.grid,
            mask_input_size=self.sam.mask_input_size,
            logit_scale=scale,
            logit_bias=bias,
        )
        # Learnable temperature/bias of the region-text contrastive loss (init log(1/0.07), log(0.5)).
        self.contrast_scale = nn.Parameter(torch.tensor(2.6592))
        self.contrast_bias = nn.Parameter(torch.tensor(-0.6931))
        self.register_buffer("clip_mean", torch.tensor(self.encoder.image_mean).view(1, 3, 1, 1), False)
        self.register_buffer("clip_std", torch.tensor(self.encoder.image_std).view(1, 3, 1, 1), False)

    @property
    def image_size(self) -> int:
        return self.cfg.sam.image_size

    def encode_image(self, images01: torch.Tensor) -> ImageEmbedding:
        """images01: B x 3 x S x S in [0, 1] -> ImageEmbedding (SAM embedding (+ high-res), CLIP patch tokens)."""
        sam, high_res = self.sam.encode_image(images01)
        x = (images01 - self.clip_mean) / self.clip_std
        size = self.encoder.image_size
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return ImageEmbedding(sam=sam, clip=self.encoder.encode_image(x), sam_high_res=high_res)

    def decode(self, image: ImageEmbedding, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> RefSegOutput:
        """Per-expression work: text encoding, prompter, mask decoder. Row i of the text goes with image i."""
        text = self.encoder.encode_text(input_ids, attention_mask)
        prompts = self.prompter(image.clip, text.tokens, text.mask, text.pooled)
        dense = self.sam.embed_dense(prompts.dense_logits)
        masks, iou = self.sam.decode(image.sam, prompts.sparse, dense, image.sam_high_res)
        return RefSegOutput(
            mask_logits=masks,
            iou_pred=iou,
            dense_logits=prompts.dense_logits,
            q1=prompts.q1,
            q2=prompts.q2,
            clip_tokens=image.clip,
            text=text,
        )

    def forward(self, images01: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> RefSegOutput:
        return self.decode(self.encode_image(images01), input_ids, attention_mask)
