"""Dual-modal encoder: CLIP or SigLIP through `transformers`, from a hub name, a local directory or a config.

Outputs what the prompter needs (model.md §1.4 steps 1-2):
  image tokens  V0: B x N x Cv  (N = h*w patch grid, CLS dropped, after the tower's final LayerNorm)
  text tokens   T : B x L x Ct  (with attention mask B x L)
  pooled text   t : B x D       (in the joint image-text space: CLIP text_projection(EOS), SigLIP head(last))
and the projections that map tower widths into the joint space (identity for SigLIP, whose widths already match),
used by the region-text contrastive loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn

from ..config import EncoderConfig

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUILTIN_PREFIX = "builtin:"

# Normalisation used when neither the config nor an image-processor file says otherwise.
DEFAULT_STATS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


# LoRA targets (peft regex over module names). Both kinds: the attention projections of both towers, except
# SigLIP's vision pooling head (attention.out_proj): the model uses patch tokens, never the pooled image embedding,
# so adapters there would never train. SigLIP also adapts its text `head` (model.md §1.2), which gives the pooled
# text embedding of the dense prompt.
_ATTN = r"(?!vision_model\.head\.).*\.(q_proj|k_proj|v_proj|out_proj)"
LORA_TARGETS = {"clip": rf"^{_ATTN}$", "siglip": rf"^({_ATTN}|text_model\.head)$"}


def resolve_asset(name: str) -> str:
    """`builtin:NAME` -> the shipped directory refseg_model/assets/NAME; anything else unchanged."""
    if name.startswith(BUILTIN_PREFIX):
        path = ASSETS / name[len(BUILTIN_PREFIX):]
        if not path.is_dir():
            raise FileNotFoundError(f"no built-in asset {name!r} (looked in {path})")
        return str(path)
    return name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_asset(name))


@dataclass
class TextFeatures:
    tokens: torch.Tensor  # B x L x Ct
    mask: torch.Tensor  # B x L, bool, True = real token
    pooled: torch.Tensor  # B x D, joint space


class DualModalEncoder(nn.Module):
    """CLIP (`CLIPModel`) or SigLIP (`SiglipModel`) with patch tokens, text tokens and a pooled text embedding."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.cfg = cfg
        if cfg.kind not in DEFAULT_STATS:
            raise ValueError(f"encoder kind must be one of {sorted(DEFAULT_STATS)}, got {cfg.kind!r}")
        if cfg.pretrained:
            path = resolve_asset(cfg.pretrained)
            self.model = AutoModel.from_pretrained(path)
        elif cfg.hf_config:
            hf_cfg = AutoConfig.for_model(**cfg.hf_config)
            self.model = AutoModel.from_config(hf_cfg)
        else:
            raise ValueError("encoder config needs `pretrained` (hub name or directory) or `hf_config`")
        model_type = self.model.config.model_type
        expected = {"clip": "clip", "siglip": "siglip"}[cfg.kind]
        if model_type != expected:
            raise ValueError(f"encoder kind {cfg.kind!r} but the checkpoint is a {model_type!r} model")

        tok_name = cfg.tokenizer or cfg.pretrained
        if not tok_name:
            raise ValueError("encoder config needs a tokenizer (hub name, directory or builtin:NAME)")
        self.tokenizer = load_tokenizer(tok_name)
        self.image_mean, self.image_std = self._image_stats(cfg)

        vcfg, tcfg = self.model.config.vision_config, self.model.config.text_config
        self.image_size: int = int(vcfg.image_size)
        self.grid: int = self.image_size // int(vcfg.patch_size)
        self.vision_dim: int = int(vcfg.hidden_size)
        self.text_dim: int = int(tcfg.hidden_size)
        if cfg.kind == "clip":
            self.embed_dim = int(self.model.config.projection_dim)
        else:
            self.embed_dim = int(getattr(tcfg, "projection_size", None) or tcfg.hidden_size)
            if self.embed_dim != self.vision_dim:
                raise ValueError("SigLIP towers of different widths are not supported")

        if cfg.freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        if cfg.lora_rank > 0:
            from .lora import add_lora

            add_lora(self.model, LORA_TARGETS[cfg.kind], cfg.lora_rank)

    def _image_stats(self, cfg: EncoderConfig) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        mean, std = DEFAULT_STATS[cfg.kind]
        if cfg.pretrained and (cfg.image_mean is None or cfg.image_std is None):
            try:
                from transformers import AutoImageProcessor

                proc = AutoImageProcessor.from_pretrained(resolve_asset(cfg.pretrained))
                mean, std = tuple(proc.image_mean), tuple(proc.image_std)
            except (OSError, ValueError, AttributeError):
                pass  # no preprocessor_config.json: keep the family's defaults
        return tuple(cfg.image_mean or mean), tuple(cfg.image_std or std)

    # ----------------------------------------------------------------------------------------- logit scalars
    def init_logit_scale_bias(self) -> Tuple[float, float]:
        """The tower's contrastive temperature and bias (SigLIP has both; CLIP only a scale)."""
        scale = float(self.model.logit_scale.detach().reshape(-1)[0])
        bias = float(self.model.logit_bias.detach().reshape(-1)[0]) if hasattr(self.model, "logit_bias") else 0.0
        return scale, bias

    # ----------------------------------------------------------------------------------------------- text
    def tokenize(self, texts: List[str], device: torch.device | str = "cpu") -> dict:
        """texts -> input_ids, attention_mask: B x L (mask 1 = real token, 0 = padding).

        SigLIP was trained with fixed-length padding (L = max_text_length, 64 for SigLIP 2), CLIP with EOS
        pooling (any padding: L = the longest in the batch). The mask is always the real one, whatever the
        tokenizer's default outputs, so that the prompter can ignore padding.
        """
        padding = "max_length" if self.cfg.kind == "siglip" else "longest"
        enc = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.cfg.max_text_length, return_tensors="pt",
            return_attention_mask=True,
        )
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        """input_ids, attention_mask: B x L -> TextFeatures(tokens B x L x Ct, mask B x L, pooled B x D).

        `mask` is the attention mask for both kinds: the prompter's query pooling and text cross-attention skip
        padding. The towers run as they were pre-trained: CLIP with the mask (EOS pooling); SigLIP without it
        (it was trained on fixed-length padded text, attending to all positions, pooled at the last position).
        """
        mask = attention_mask.bool()
        if self.cfg.kind == "clip":
            out = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask)
            pooled = self.model.text_projection(out.pooler_output)
        else:
            out = self.model.text_model(input_ids=input_ids)
            pooled = out.pooler_output
        return TextFeatures(tokens=out.last_hidden_state, mask=mask, pooled=pooled)

    # ---------------------------------------------------------------------------------------------- image
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: B x 3 x S x S (normalised, S = image_size) -> patch tokens B x (g*g) x Cv."""
        out = self.model.vision_model(pixel_values=pixel_values)
        tokens = out.last_hidden_state
        if self.cfg.kind == "clip":
            tokens = self.model.vision_model.post_layernorm(tokens[:, 1:])
        return tokens

    def project_image(self, x: torch.Tensor) -> torch.Tensor:
        """... x Cv -> ... x D (joint space)."""
        return self.model.visual_projection(x) if self.cfg.kind == "clip" else x

    def project_text(self, x: torch.Tensor) -> torch.Tensor:
        """... x Ct -> ... x D (joint space)."""
        return self.model.text_projection(x) if self.cfg.kind == "clip" else x
