"""The dense prompt's cosine on the upsampled feature map (the paper's 'preup', PrompterConfig.dense_upsample="pre")
is computed without materialising the upsampled D x M x M map; it must equal the direct computation, values and
gradients, for any grid and output size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refseg_model.config import PrompterConfig
from refseg_model.modeling.prompter import CascadedPrompter, upsampled_cosine


def direct(fmap: torch.Tensor, t: torch.Tensor, size: int) -> torch.Tensor:
    up = F.interpolate(fmap, size=(size, size), mode="bilinear", align_corners=True)
    return torch.einsum("bchw,bc->bhw", F.normalize(up, dim=1), t)[:, None]


@pytest.mark.parametrize("b,d,g,m", [(2, 64, 16, 256), (3, 8, 5, 16), (1, 16, 2, 7), (2, 8, 8, 3), (1, 4, 1, 8),
                                     (2, 8, 4, 4)])
def test_upsampled_cosine_equals_the_direct_computation(b, d, g, m):
    torch.manual_seed(g * 100 + m)
    fmap = torch.randn(b, d, g, g, dtype=torch.float64, requires_grad=True)
    t = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=-1).requires_grad_()
    ours, ref = upsampled_cosine(fmap, t, m), direct(fmap, t, m)
    assert ours.shape == ref.shape == (b, 1, m, m)
    assert torch.allclose(ours, ref, atol=1e-10)
    w = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad((ours * w).sum(), [fmap, t]), torch.autograd.grad((ref * w).sum(), [fmap, t])):
        assert torch.allclose(a, r, atol=1e-8)


def test_prompter_pre_mode_unchanged_in_float32():
    """The prompter's 'pre' dense logits equal the direct formula on its own feature map (float32)."""
    torch.manual_seed(0)
    cfg = PrompterConfig(num_queries=3, num_prompts=4, attn_dim=16, num_heads=2, mlp_dim=32, query_layers=1,
                         stage1_layers=1, stage2_layers=1, dense_upsample="pre")
    p = CascadedPrompter(cfg, text_dim=16, vision_dim=32, embed_dim=24, prompt_dim=8, grid=6, mask_input_size=64).eval()
    image, text, mask, pooled = torch.randn(2, 36, 32), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool), \
        torch.randn(2, 24)
    captured = {}
    p.dense_head.register_forward_hook(lambda m, i, o: captured.setdefault("fmap", o))
    with torch.no_grad():
        out = p(image, text, mask, pooled)
        ref = direct(captured["fmap"], F.normalize(pooled, dim=-1), 64) * p.logit_scale.exp() + p.logit_bias
    assert out.dense_logits.shape == (2, 1, 64, 64)
    assert torch.allclose(out.dense_logits, ref, atol=1e-4 * float(p.logit_scale.detach().exp()))
