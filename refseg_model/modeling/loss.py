"""Training losses (model.md §1.5): 5 BCE + 5 Dice + 0.5 query orthogonality + 0.5 region-text contrastive,
plus an optional BCE on the dense similarity prompt (weight 0 in the paper).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..config import LossConfig
from .refseg import RefSegModel, RefSegOutput


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """V-Net Dice, 1 - 2 sum(p g) / (sum p^2 + sum g^2), per image over valid pixels, mean over the batch.

    logits, target, valid: B x 1 x H x W.
    """
    p = torch.sigmoid(logits) * valid
    g = target * valid
    num = 2 * (p * g).flatten(1).sum(1)
    den = (p * p).flatten(1).sum(1) + eps + (g * g).flatten(1).sum(1) + eps
    return (1 - num / den).mean()


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1.0)


def orthogonality_loss(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Push the two query sets into complementary subspaces: mean over batch of cos(mean Q1, mean Q2)^2."""
    return F.cosine_similarity(q1.mean(1), q2.mean(1), dim=-1).pow(2).mean()


def _gather_with_grad_local(x: torch.Tensor) -> torch.Tensor:
    """All-gather across processes; only the local slice keeps its gradient (OpenCLIP style)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts, 0)


def region_text_contrastive(
    model: RefSegModel, out: RefSegOutput, target: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between the target region of the raw encoder map and the second query set.

    Region vector: encoder tokens (B x N x Cv) times the GT mask at grid resolution, averaged over all N
    positions (sum / N, as the paper does); text vector: mean of Q2. Both projected to the joint space.
    """
    b, n, _ = out.clip_tokens.shape
    g = int(round(n ** 0.5))
    m = (F.interpolate(target, size=(g, g), mode="bilinear", align_corners=False) > 0.5).float()
    region = (out.clip_tokens * m.flatten(1)[..., None]).sum(1) / n
    region = F.normalize(model.encoder.project_image(region), dim=-1)
    text = F.normalize(model.encoder.project_text(out.q2.mean(1)), dim=-1)
    region_all, text_all = _gather_with_grad_local(region), _gather_with_grad_local(text)
    if region_all.shape[0] < 2:
        return region.sum() * 0.0
    logits = scale.exp() * region_all @ text_all.t() + bias
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def refseg_loss(
    model: RefSegModel, out: RefSegOutput, target: torch.Tensor, valid: torch.Tensor, weights: LossConfig,
    text_rows: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """target, valid: B x 1 x S x S float (padded input frame). Returns the parts and their weighted sum "loss".

    text_rows: B bool, the rows that have an expression (None: all). The text path's own losses (query
    orthogonality, region-text contrastive, dense prompt) see only those: a row without an expression (a
    clicks-only annotation, decoded from its clicks) must not teach the text path that "" means its object."""
    logits = out.mask_logits
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    parts: Dict[str, torch.Tensor] = {
        "bce": masked_bce(logits, target, valid),
        "dice": dice_loss(logits, target, valid),
    }
    text_out, text_target, text_valid = out, target, valid
    if text_rows is not None and not bool(text_rows.all()):
        rows = text_rows.nonzero().squeeze(1)
        text_out = replace(out, dense_logits=out.dense_logits[rows], q1=out.q1[rows], q2=out.q2[rows],
                           clip_tokens=out.clip_tokens[rows])
        text_target, text_valid = target[rows], valid[rows]
    if text_target.shape[0] == 0:  # no row has an expression: nothing for the text path to learn here
        zero = out.q1.sum() * 0.0
        parts.update({k: zero for k, on in (("orth", weights.orthogonality), ("contrast", weights.contrastive),
                                             ("dense", weights.dense)) if on})
    else:
        if weights.orthogonality:
            parts["orth"] = orthogonality_loss(text_out.q1, text_out.q2)
        if weights.contrastive:
            parts["contrast"] = region_text_contrastive(model, text_out, text_target, model.contrast_scale,
                                                        model.contrast_bias)
        if weights.dense:
            size = text_out.dense_logits.shape[-2:]
            t = F.interpolate(text_target, size=size, mode="bilinear", align_corners=False)
            v = F.interpolate(text_valid, size=size, mode="nearest")
            parts["dense"] = masked_bce(text_out.dense_logits, (t > 0.5).float(), v)
    w = {"bce": weights.bce, "dice": weights.dice, "orth": weights.orthogonality,
         "contrast": weights.contrastive, "dense": weights.dense}
    parts["loss"] = sum(w[k] * v for k, v in parts.items())
    return parts


def interactive_pass_loss(passes: Sequence[torch.Tensor], target: torch.Tensor, valid: torch.Tensor,
                          weights: LossConfig, zoomed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The mask loss (weights.bce BCE + weights.dice Dice) of an interactive training step's earlier passes
    (`RefSegOutput.interactive_passes`, each R x 1 x M x M for the last R rows of target/valid B x 1 x S x S),
    averaged over the passes. `zoomed` (B bool): rows that are zoomed crops, left out of the first pass (their
    answer to the initial prompt without a previous mask, which zoom-in never asks for)."""
    total = []
    for i, logits in enumerate(passes):
        t, v = target[-logits.shape[0]:], valid[-logits.shape[0]:]
        if i == 0 and zoomed is not None:
            keep = ~zoomed[-logits.shape[0]:]
            if not bool(keep.any()):
                continue
            logits, t, v = logits[keep], t[keep], v[keep]
        if logits.shape[-2:] != t.shape[-2:]:
            logits = F.interpolate(logits, size=t.shape[-2:], mode="bilinear", align_corners=False)
        total.append(weights.bce * masked_bce(logits, t, v) + weights.dice * dice_loss(logits, t, v))
    if not total:  # one pass, all of it zoomed crops
        return passes[0].sum() * 0.0
    return torch.stack(total).mean()
