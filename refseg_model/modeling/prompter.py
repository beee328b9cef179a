"""Cascaded second-order prompter (RSRefSeg 2, model.md §1.4 step 3).

Shapes (B batch, L text tokens, N = g*g image tokens, K queries, P prompts):
  text tokens T        B x L x Ct        pooled text t   B x D
  image tokens V0      B x N x Cv        (g x g grid)
  -> sparse prompts    B x P x Cp        (SAM prompt width)
  -> dense logits      B x 1 x M x M     (M = SAM mask-input size, 4 x SAM embedding size)
  and Q1, Q2 (B x K x Ct) after the query block, for the auxiliary losses.

Every "attn"/"MLP" op is residual and followed by a LayerNorm that replaces x (post-norm, as in SAM's two-way
transformer). Positional embeddings are added to queries and keys, never to values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PrompterConfig


class Attention(nn.Module):
    """Multi-head attention whose query width and key/value width may differ (cross-modal).

    q: B x Nq x Dq, k/v: B x Nk x Dkv -> B x Nq x Dq (projected internally to `attn_dim`).
    """

    def __init__(self, q_dim: int, kv_dim: int, attn_dim: int, num_heads: int) -> None:
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim {attn_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(q_dim, attn_dim)
        self.k_proj = nn.Linear(kv_dim, attn_dim)
        self.v_proj = nn.Linear(kv_dim, attn_dim)
        self.out_proj = nn.Linear(attn_dim, q_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: Optional[int] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class AttnOp(nn.Module):
    """x = LN(x + attn(x + pe_x, y + pe_y, y)): one residual attention op with its post-norm."""

    def __init__(self, q_dim: int, kv_dim: int, cfg: PrompterConfig) -> None:
        super().__init__()
        self.attn = Attention(q_dim, kv_dim, cfg.attn_dim, cfg.num_heads)
        self.norm = nn.LayerNorm(q_dim)

    def forward(self, x, x_pe, y, y_pe, key_mask=None):
        q = x if x_pe is None else x + x_pe
        k = y if y_pe is None else y + y_pe
        return self.norm(x + self.attn(q, k, y, key_mask))


class MLPOp(nn.Module):
    """x = LN(x + MLP(x))."""

    def __init__(self, dim: int, cfg: PrompterConfig) -> None:
        super().__init__()
        self.mlp = MLP(dim, cfg.mlp_dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mlp(x))


class QueryLayer(nn.Module):
    """Step 3a: two query sets read the text and each other (self, text, cross-set), each set in turn."""

    def __init__(self, ct: int, cfg: PrompterConfig) -> None:
        super().__init__()
        self.self1, self.self2 = AttnOp(ct, ct, cfg), AttnOp(ct, ct, cfg)
        self.text1, self.text2 = AttnOp(ct, ct, cfg), AttnOp(ct, ct, cfg)
        self.mlp_t1, self.mlp_t2 = MLPOp(ct, cfg), MLPOp(ct, cfg)
        self.cross12, self.cross21 = AttnOp(ct, ct, cfg), AttnOp(ct, ct, cfg)
        self.mlp_c1, self.mlp_c2 = MLPOp(ct, cfg), MLPOp(ct, cfg)

    def forward(self, q1, q2, p1, p2, text, text_mask):
        q1 = self.self1(q1, p1, q1, p1)
        q2 = self.self2(q2, p2, q2, p2)
        q1 = self.mlp_t1(self.text1(q1, p1, text, None, text_mask))
        q2 = self.mlp_t2(self.text2(q2, p2, text, None, text_mask))
        q1 = self.mlp_c1(self.cross12(q1, p1, q2, p2))
        q2 = self.mlp_c2(self.cross21(q2, p2, q1, p1))
        return q1, q2


class ActivationLayer(nn.Module):
    """Steps 3b/3c (image part): the queries attend to themselves, then image tokens attend to the queries."""

    def __init__(self, cv: int, ct: int, cfg: PrompterConfig) -> None:
        super().__init__()
        self.query_self = AttnOp(ct, ct, cfg)
        self.image_cross = AttnOp(cv, ct, cfg)
        self.image_mlp = MLPOp(cv, cfg)

    def forward(self, v, v_pe, q, q_pe):
        q = self.query_self(q, q_pe, q, q_pe)
        v = self.image_mlp(self.image_cross(v, v_pe, q, q_pe))
        return v, q


class PromptLayer(nn.Module):
    """Step 3c (prompt part): prompt tokens attend to themselves, to the second query set, then to the image."""

    def __init__(self, cp: int, cv: int, ct: int, cfg: PrompterConfig) -> None:
        super().__init__()
        self.prompt_self = AttnOp(cp, cp, cfg)
        self.query_cross = AttnOp(cp, ct, cfg)
        self.query_mlp = MLPOp(cp, cfg)
        self.image_cross = AttnOp(cp, cv, cfg)
        self.image_mlp = MLPOp(cp, cfg)

    def forward(self, p, p_pe, q, q_pe, v, v_pe):
        p = self.prompt_self(p, p_pe, p, p_pe)
        p = self.query_mlp(self.query_cross(p, p_pe, q, q_pe))
        p = self.image_mlp(self.image_cross(p, p_pe, v, v_pe))
        return p


def masked_adaptive_pool(tokens: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Adaptive average pooling of each sequence's valid tokens into k tokens.

    tokens: B x L x C, mask: B x L (True = valid, valid tokens first) -> B x k x C. Equals
    `F.adaptive_avg_pool1d` over the unpadded sequence (bins [floor(j n / k), ceil((j+1) n / k))).
    """
    n = mask.sum(dim=1, keepdim=True).clamp(min=1).float()  # B x 1
    j = torch.arange(k, device=tokens.device).float()[None, :]  # 1 x k
    start = torch.floor(j * n / k)  # B x k
    end = torch.ceil((j + 1) * n / k)
    pos = torch.arange(tokens.shape[1], device=tokens.device).float()[None, None, :]  # 1 x 1 x L
    w = ((pos >= start[..., None]) & (pos < end[..., None])).float()  # B x k x L
    w = w / w.sum(dim=-1, keepdim=True).clamp(min=1.0)
    return w @ tokens


def _bilinear_cells(g: int, m: int, device) -> "tuple[torch.Tensor, torch.Tensor]":
    """Bilinear resampling (align_corners=True) of g positions to m: for each output position, the lower input
    index i in [0, g-2] and the fraction a in [0, 1], so that out = (1 - a) * x[i] + a * x[i + 1]. Both: m."""
    src = torch.arange(m, device=device, dtype=torch.float64) * ((g - 1) / max(m - 1, 1))
    i = src.floor().clamp(max=g - 2).long()
    return i, src - i


def upsampled_cosine(fmap: torch.Tensor, t: torch.Tensor, size: int) -> torch.Tensor:
    """Cosine similarity between unit vectors t and the feature map bilinearly upsampled (align_corners=True).

    fmap: B x D x g x g, t: B x D (unit norm) -> B x 1 x size x size; equal to
    `einsum(F.normalize(F.interpolate(fmap, size, mode="bilinear", align_corners=True), dim=1), t)` but without
    materialising the B x D x size x size map (D = 1152 at 256 x 256 for the paper's model): an interpolated
    feature is a weighted sum of its cell's 4 grid features, so its dot product with t interpolates the grid's dot
    products, and its squared norm is a quadratic form in the cell's 4 x 4 Gram matrix.
    """
    # At least float32 (bf16 under autocast would cost the sums their precision; at grid resolution this is cheap);
    # elementwise products and sums, which autocast leaves in that precision.
    dtype = torch.promote_types(fmap.dtype, torch.float32)
    fmap, t = fmap.to(dtype), t.to(dtype)[:, :, None, None]
    g = fmap.shape[-1]
    if g == 1:  # a constant map
        return (F.normalize(fmap, dim=1) * t).sum(1, keepdim=True).expand(-1, -1, size, size)
    num = F.interpolate((fmap * t).sum(1, keepdim=True), size=(size, size), mode="bilinear",
                        align_corners=True)[:, 0]  # B x M x M
    i, a = _bilinear_cells(g, size, fmap.device)
    a = a.to(fmap.dtype)
    wy, wx = (1 - a, a), (1 - a, a)
    # the 4 corners of each cell (top-left, top-right, bottom-left, bottom-right), B x D x (g-1) x (g-1) each
    corners = [fmap[:, :, dy : g - 1 + dy, dx : g - 1 + dx] for dy in (0, 1) for dx in (0, 1)]
    weights = [wy[dy][:, None] * wx[dx][None, :] for dy in (0, 1) for dx in (0, 1)]  # M x M each
    norm2 = torch.zeros_like(num)
    for p in range(4):
        for q in range(p, 4):
            gram = (corners[p] * corners[q]).sum(1)[:, i][:, :, i]  # B x M x M
            norm2 = norm2 + (1.0 if p == q else 2.0) * weights[p] * weights[q] * gram
    return (num / norm2.clamp(min=1e-24).sqrt().clamp(min=1e-12))[:, None]


@dataclass
class PrompterOutput:
    sparse: torch.Tensor  # B x P x Cp
    dense_logits: torch.Tensor  # B x 1 x M x M
    q1: torch.Tensor  # B x K x Ct (after the query block)
    q2: torch.Tensor  # B x K x Ct


class CascadedPrompter(nn.Module):
    """Text -> two complementary query sets -> stage 1 (Q1) -> stage 2 (Q2 + prompt tokens) -> SAM prompts."""

    def __init__(
        self,
        cfg: PrompterConfig,
        *,
        text_dim: int,
        vision_dim: int,
        embed_dim: int,
        prompt_dim: int,
        grid: int,
        mask_input_size: int,
        logit_scale: float = math.log(1 / 0.07),
        logit_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = grid
        self.mask_input_size = mask_input_size
        ct, cv, cp, k = text_dim, vision_dim, prompt_dim, cfg.num_queries
        self.query_pe1 = nn.Parameter(torch.randn(k, ct))
        self.query_pe2 = nn.Parameter(torch.randn(k, ct))
        self.image_pe = nn.Parameter(torch.randn(1, cv, grid, grid))
        self.prompt_tokens = nn.Parameter(torch.randn(cfg.num_prompts, cp))
        self.prompt_pe = nn.Parameter(torch.randn(cfg.num_prompts, cp))
        self.query_layers = nn.ModuleList(QueryLayer(ct, cfg) for _ in range(cfg.query_layers))
        self.stage1 = nn.ModuleList(ActivationLayer(cv, ct, cfg) for _ in range(cfg.stage1_layers))
        self.stage2 = nn.ModuleList(ActivationLayer(cv, ct, cfg) for _ in range(cfg.stage2_layers))
        self.prompt_layers = nn.ModuleList(PromptLayer(cp, cv, ct, cfg) for _ in range(cfg.stage2_layers))
        self.sparse_head = MLP(cp, 2 * cp, cp)
        self.dense_head = nn.Sequential(
            nn.Conv2d(cv, cv // 2, 3, padding=1),
            nn.BatchNorm2d(cv // 2),
            nn.GELU(),
            nn.Conv2d(cv // 2, embed_dim, 3, padding=1),
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias)))

    def _image_pe(self, grid: int) -> torch.Tensor:
        pe = self.image_pe
        if grid != pe.shape[-1]:
            pe = F.interpolate(pe, size=(grid, grid), mode="bicubic", align_corners=False)
        return pe.flatten(2).transpose(1, 2)  # 1 x N x Cv

    def forward(
        self, image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_pooled: torch.Tensor
    ) -> PrompterOutput:
        """image_tokens B x N x Cv, text_tokens B x L x Ct, text_mask B x L, text_pooled B x D."""
        b, n, cv = image_tokens.shape
        grid = int(round(math.sqrt(n)))
        if grid * grid != n:
            raise ValueError(f"image tokens must form a square grid, got {n}")
        p1, p2 = self.query_pe1[None], self.query_pe2[None]
        q1 = q2 = masked_adaptive_pool(text_tokens, text_mask, self.cfg.num_queries)
        for layer in self.query_layers:
            q1, q2 = layer(q1, q2, p1, p2, text_tokens, text_mask)
        q1_out, q2_out = q1, q2

        v, v_pe = image_tokens, self._image_pe(grid)
        for layer in self.stage1:  # first order: Q1 activates the image tokens
            v, q1 = layer(v, v_pe, q1, p1)
        p = self.prompt_tokens[None].expand(b, -1, -1)
        p_pe = self.prompt_pe[None]
        for act, prm in zip(self.stage2, self.prompt_layers):  # second order, in cascade on stage 1's tokens
            v, q2 = act(v, v_pe, q2, p2)
            p = prm(p, p_pe, q2, p2, v, v_pe)
        sparse = self.sparse_head(p)

        fmap = v.transpose(1, 2).reshape(b, cv, grid, grid)
        fmap = self.dense_head(fmap)
        t = F.normalize(text_pooled, dim=-1)
        if self.cfg.dense_upsample == "pre":  # cosine on the upsampled map (computed without materialising it)
            cos = upsampled_cosine(fmap, t, self.mask_input_size)
        else:
            cos = torch.einsum("bchw,bc->bhw", F.normalize(fmap, dim=1), t)[:, None]
        dense = cos * self.logit_scale.exp() + self.logit_bias
        if self.cfg.dense_upsample == "post":
            size = (self.mask_input_size,) * 2
            dense = F.interpolate(dense, size=size, mode="bilinear", align_corners=True)
        return PrompterOutput(sparse=sparse, dense_logits=dense, q1=q1_out, q2=q2_out)
