"""Loading foundation weights and RefSeg checkpoints through the real code paths, with tiny stand-ins.

Everything here is written by the tests in the formats the real files use:

* CLIP / SigLIP: a `transformers` model saved with `save_pretrained(dir)` next to a tokenizer and an image
  processor (`preprocessor_config.json`), i.e. what `openai/clip-vit-base-patch16` or a SigLIP 2 hub snapshot
  look like on disk;
* SAM: `torch.save(sam.state_dict(), path)` of an official `segment_anything.modeling.Sam` (the layout of
  `sam_vit_b_01ec64.pth` & co.), also as `.safetensors`;
* RefSeg checkpoints: `save_checkpoint` / `load_checkpoint` directories.
"""
from __future__ import annotations

import copy
import json
import pickle
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from refseg_model.build import BUILTIN_TOKENIZER, DEMO_CHECKPOINT, build_model, preset_config, resolve_weights
from refseg_model.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from refseg_model.config import EncoderConfig, RefSegConfig, SamConfig
from refseg_model.modeling.encoder import ASSETS, DEFAULT_STATS, DualModalEncoder
from refseg_model.modeling.sam import SamSegmenter

torch.set_num_threads(1)

TOKENIZER_DIR = ASSETS / "clip-bpe-8k"
# ids of the shipped 8k BPE tokenizer (bos, eos = pad)
VOCAB = dict(vocab_size=8192, bos_token_id=8190, eos_token_id=8191, pad_token_id=8191)
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
CLIP_MEAN, CLIP_STD = (0.11, 0.22, 0.33), (0.44, 0.55, 0.66)
SIGLIP_MEAN, SIGLIP_STD = (0.25, 0.35, 0.45), (0.3, 0.4, 0.5)

# A tiny SAM (64 px input, 8 px patches -> 8 x 8 embedding), with a global-attention block and windowed blocks.
TINY_SAM = dict(
    image_size=64, patch_size=8, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    encoder_global_attn_indexes=[1], window_size=4, prompt_embed_dim=32, mask_in_chans=8, decoder_depth=1,
    decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
)


# ---------------------------------------------------------------------------------------------------- writers
def _save_tokenizer(d: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(str(d))


def write_tiny_clip(d: Path, *, processor: bool = True):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(1)
    cfg = CLIPConfig(
        projection_dim=32,
        text_config=dict(max_position_embeddings=32, **TOWER, **VOCAB),
        vision_config=dict(image_size=64, patch_size=16, **TOWER),
    )
    model = CLIPModel(cfg).eval()
    model.save_pretrained(str(d))
    _save_tokenizer(d)
    if processor:
        CLIPImageProcessor(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(str(d))
    return model


def write_tiny_siglip(d: Path):
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(2)
    cfg = SiglipConfig(
        text_config=dict(max_position_embeddings=16, **TOWER, **VOCAB),
        vision_config=dict(image_size=64, patch_size=16, **TOWER),
    )
    model = SiglipModel(cfg).eval()
    model.save_pretrained(str(d))
    _save_tokenizer(d)  # any tokenizer works for the test; SigLIP pads to max_length
    SiglipImageProcessor(image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD)).save_pretrained(str(d))
    return model


def official_sam(cfg: SamConfig, seed: int = 3):
    """A `segment_anything.modeling.Sam` built as `segment_anything.build_sam._build_sam` does, at `cfg`'s
    sizes, every parameter perturbed (so that zero-initialised ones such as pos_embed/rel_pos also prove that
    they were loaded)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    e = cfg.image_size // cfg.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth, embed_dim=cfg.encoder_embed_dim, img_size=cfg.image_size, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes, window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim, image_embedding_size=(e, e),
            input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=cfg.prompt_embed_dim,
                                          mlp_dim=cfg.decoder_mlp_dim, num_heads=cfg.decoder_num_heads),
            transformer_dim=cfg.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return sam


def write_tiny_sam(path: Path, cfg: SamConfig | None = None, *, with_pixel_stats: bool = False):
    sam = official_sam(cfg or SamConfig(**TINY_SAM))
    state = sam.state_dict()
    if with_pixel_stats:  # some re-exports carry the (0-255, 3x1x1) pixel statistics as well
        state = {**state, "pixel_mean": sam.pixel_mean.clone(), "pixel_std": sam.pixel_std.clone()}
    torch.save(state, str(path))
    return sam


def assert_same_state(expected: dict, actual: dict) -> None:
    assert set(expected) == set(actual)
    for k, v in expected.items():
        assert torch.equal(v, actual[k]), k


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-clip")
    model = write_tiny_clip(d)
    return d, model


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam") / "sam_tiny_0000.pth"
    sam = write_tiny_sam(path)
    return path, sam


# ---------------------------------------------------------------------------------------------- CLIP / SigLIP
def _load_saved_dir(kind, d, saved, max_text_length, mean, std) -> DualModalEncoder:
    """A `save_pretrained` directory (model, tokenizer, image processor) loaded as a `kind` encoder: the very
    weights that were saved, and the normalisation from the saved image processor, not the family defaults."""
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in d.iterdir()
    }
    enc = DualModalEncoder(EncoderConfig(kind=kind, pretrained=str(d), max_text_length=max_text_length))
    assert_same_state(saved.state_dict(), enc.model.state_dict())
    assert enc.image_mean == pytest.approx(mean)
    assert enc.image_std == pytest.approx(std)
    return enc


def test_clip_save_pretrained_dir_loads(clip_dir):
    d, saved = clip_dir
    enc = _load_saved_dir("clip", d, saved, 32, CLIP_MEAN, CLIP_STD)
    assert (enc.image_size, enc.grid, enc.vision_dim, enc.text_dim, enc.embed_dim) == (64, 4, 32, 32, 32)
    # the tokenizer came from the directory, and features match the saved model's own
    tok = enc.tokenize(["the red box", "a small white storage tank"])
    assert int(tok["input_ids"][0, 0]) == VOCAB["bos_token_id"]
    with torch.no_grad():
        text = enc.encode_text(tok["input_ids"], tok["attention_mask"])
        ref = saved.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        ref = getattr(ref, "pooler_output", ref)
        assert torch.allclose(text.pooled, ref, atol=1e-6)
        px = torch.rand(2, 3, 64, 64)
        tokens = enc.encode_image(px)
        assert tokens.shape == (2, 16, 32)
        ref_tokens = saved.vision_model.post_layernorm(saved.vision_model(pixel_values=px).last_hidden_state[:, 1:])
        assert torch.allclose(tokens, ref_tokens, atol=1e-6)
    # frozen by default
    assert not any(p.requires_grad for p in enc.parameters())


def test_clip_stats_defaults_and_overrides(tmp_path, clip_dir):
    d = tmp_path / "no-processor"
    write_tiny_clip(d, processor=False)
    enc = DualModalEncoder(EncoderConfig(kind="clip", pretrained=str(d)))
    assert (enc.image_mean, enc.image_std) == DEFAULT_STATS["clip"]
    enc = DualModalEncoder(EncoderConfig(kind="clip", pretrained=str(clip_dir[0]), image_mean=(0.5, 0.5, 0.5),
                                         image_std=(0.25, 0.25, 0.25)))
    assert (enc.image_mean, enc.image_std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_encoder_kind_must_match_checkpoint(clip_dir):
    with pytest.raises(ValueError, match="siglip.*clip"):
        DualModalEncoder(EncoderConfig(kind="siglip", pretrained=str(clip_dir[0])))
    with pytest.raises(ValueError, match="kind"):
        DualModalEncoder(EncoderConfig(kind="blip", pretrained=str(clip_dir[0])))


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-siglip")
    model = write_tiny_siglip(d)
    return d, model


def test_siglip_save_pretrained_dir_loads(siglip_dir):
    d, saved = siglip_dir
    enc = _load_saved_dir("siglip", d, saved, 16, SIGLIP_MEAN, SIGLIP_STD)
    assert (enc.grid, enc.vision_dim, enc.text_dim, enc.embed_dim) == (4, 32, 32, 32)
    tok = enc.tokenize(["the red box", "a plane"])
    assert tok["input_ids"].shape == (2, 16)  # SigLIP: fixed-length padding
    with torch.no_grad():
        text = enc.encode_text(tok["input_ids"], tok["attention_mask"])
        # padding is masked for the prompter (the tower itself still runs unmasked, as SigLIP was trained)
        assert torch.equal(text.mask, tok["attention_mask"].bool()) and not bool(text.mask.all())
        ref = saved.get_text_features(input_ids=tok["input_ids"])
        ref = getattr(ref, "pooler_output", ref)
        assert torch.allclose(text.pooled, ref, atol=1e-6)
        px = torch.rand(1, 3, 64, 64)
        tokens = enc.encode_image(px)
        assert tokens.shape == (1, 16, 32)  # no CLS token in SigLIP
        assert torch.allclose(tokens, saved.vision_model(pixel_values=px).last_hidden_state, atol=1e-6)
    assert enc.init_logit_scale_bias() == pytest.approx(
        (float(saved.logit_scale.detach().reshape(-1)[0]), float(saved.logit_bias.detach().reshape(-1)[0]))
    )


# ------------------------------------------------------------------------------------------------------- SAM
def _sam_cfg(path, **over) -> SamConfig:
    return SamConfig(checkpoint=str(path), **{**TINY_SAM, **over})


def test_official_sam_state_dict_loads(sam_file):
    path, official = sam_file
    seg = SamSegmenter(_sam_cfg(path))
    expected = {k: v for k, v in official.state_dict().items() if k not in ("pixel_mean", "pixel_std")}
    assert_same_state(expected, seg.state_dict())
    # SamSegmenter.encode_image on [0, 1] input == official image encoder on Sam-normalised 0-255 input
    x01 = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, high_res = seg.encode_image(x01)
        ref = official.image_encoder((x01 * 255 - official.pixel_mean) / official.pixel_std)
    assert ours.shape == (1, 32, 8, 8) and high_res == ()  # SAM 1 has no high-resolution features
    assert torch.allclose(ours, ref, atol=1e-5)
    # image encoder frozen by default, decoder trainable
    assert not any(p.requires_grad for p in seg.image_encoder.parameters())
    assert all(p.requires_grad for p in seg.mask_decoder.parameters())


def test_sam_decode_matches_official_mask_decoder(sam_file):
    """`SamSegmenter.decode` (one prompt set per image, batched) == the official decoder per image, mask 0."""
    path, official = sam_file
    seg = SamSegmenter(_sam_cfg(path)).eval()
    torch.manual_seed(0)
    emb = torch.randn(2, 32, 8, 8)
    sparse = torch.randn(2, 5, 32)
    dense_logits = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        dense = seg.embed_dense(dense_logits)
        masks, iou = seg.decode(emb, sparse, dense)
        for i in range(2):
            ref_dense = official.prompt_encoder._embed_masks(dense_logits[i : i + 1])
            ref_masks, ref_iou = official.mask_decoder(
                image_embeddings=emb[i : i + 1], image_pe=official.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[i : i + 1], dense_prompt_embeddings=ref_dense,
                multimask_output=False,
            )
            assert torch.allclose(masks[i : i + 1], ref_masks, atol=1e-5)
            assert torch.allclose(iou[i : i + 1], ref_iou, atol=1e-5)
    assert masks.shape == (2, 1, 32, 32) and iou.shape == (2, 1)


def test_sam_variants_of_the_file_format(tmp_path, sam_file):
    _, official = sam_file
    expected = {k: v for k, v in official.state_dict().items() if k not in ("pixel_mean", "pixel_std")}
    # pixel statistics in the file are tolerated (ours are fixed buffers)
    p = tmp_path / "with_stats.pth"
    torch.save({**official.state_dict(), "pixel_mean": official.pixel_mean, "pixel_std": official.pixel_std}, p)
    assert_same_state(expected, SamSegmenter(_sam_cfg(p)).state_dict())
    # a training-script style {"model": state_dict} wrapper
    p = tmp_path / "wrapped.pth"
    torch.save({"model": official.state_dict()}, p)
    assert_same_state(expected, SamSegmenter(_sam_cfg(p)).state_dict())
    # the same state dict as safetensors
    from safetensors.torch import save_file

    p = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in official.state_dict().items()}, str(p))
    assert_same_state(expected, SamSegmenter(_sam_cfg(p)).state_dict())


def test_sam_mismatched_depth_is_a_clear_error(sam_file):
    path, _ = sam_file
    with pytest.raises(ValueError, match="does not match the configured SAM.*missing"):
        SamSegmenter(_sam_cfg(path, encoder_depth=3))


@pytest.mark.parametrize("over", [dict(encoder_embed_dim=64), dict(window_size=8)], ids=["width", "window"])
def test_sam_mismatched_shapes_is_a_clear_error(sam_file, over):
    path, _ = sam_file
    with pytest.raises(ValueError, match="does not match the configured SAM.*another shape"):
        SamSegmenter(_sam_cfg(path, **over))


_EXECUTED = []


def _side_effect(tag):  # what a malicious pickle would run
    _EXECUTED.append(tag)
    return tag


class _Payload:
    def __reduce__(self):
        return (_side_effect, ("code ran",))


def test_sam_pickle_with_objects_is_refused(tmp_path, sam_file):
    _, official = sam_file
    p = tmp_path / "evil.pth"
    torch.save({**official.state_dict(), "extra": _Payload()}, p)
    # sanity: a plain unpickle would run the payload
    torch.load(p, weights_only=False)
    assert _EXECUTED == ["code ran"]
    _EXECUTED.clear()
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        SamSegmenter(_sam_cfg(p))
    assert _EXECUTED == []


def test_sam_bad_files(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], p)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        SamSegmenter(_sam_cfg(p))
    with pytest.raises(FileNotFoundError):
        SamSegmenter(_sam_cfg(tmp_path / "absent.pth"))


# ---------------------------------------------------------------------------------------- REFSEG_WEIGHTS_DIR
def test_resolve_weights_dir(tmp_path, monkeypatch, sam_file, clip_dir):
    root = tmp_path / "weights"
    (root / "openai").mkdir(parents=True)
    shutil.copy(sam_file[0], root / "sam_tiny.pth")
    shutil.copytree(clip_dir[0], root / "openai" / "tiny-clip")
    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(root))
    monkeypatch.chdir(tmp_path)

    cfg = RefSegConfig(encoder=EncoderConfig(kind="clip", pretrained="openai/tiny-clip"),
                       sam=SamConfig(checkpoint="sam_tiny.pth", **TINY_SAM))
    out = resolve_weights(cfg)
    assert out.sam.checkpoint == str(root / "sam_tiny.pth")
    assert out.encoder.pretrained == str(root / "openai" / "tiny-clip")
    assert out.encoder.tokenizer == str(root / "openai" / "tiny-clip")
    assert cfg.sam.checkpoint == "sam_tiny.pth"  # the input is not modified
    # an explicit tokenizer is kept
    cfg2 = copy.deepcopy(cfg)
    cfg2.encoder.tokenizer = BUILTIN_TOKENIZER
    assert resolve_weights(cfg2).encoder.tokenizer == BUILTIN_TOKENIZER
    # ... and the resolved names load
    enc = DualModalEncoder(out.encoder)
    assert_same_state(clip_dir[1].state_dict(), enc.model.state_dict())
    SamSegmenter(out.sam)

    # a relative SAM file absent from the weights dir (and cwd): a clear error naming the variable
    cfg3 = copy.deepcopy(cfg)
    cfg3.sam.checkpoint = "sam_vit_b_01ec64.pth"
    with pytest.raises(FileNotFoundError, match="REFSEG_WEIGHTS_DIR"):
        resolve_weights(cfg3)
    # an encoder name with no local copy is left for the hub
    cfg4 = copy.deepcopy(cfg)
    cfg4.encoder.pretrained = "openai/clip-vit-base-patch16"
    assert resolve_weights(cfg4).encoder.pretrained == "openai/clip-vit-base-patch16"

    monkeypatch.delenv("REFSEG_WEIGHTS_DIR")
    with pytest.raises(FileNotFoundError, match="unset"):
        resolve_weights(cfg)


# ----------------------------------------------------------------------------------- full model, checkpoints
def _pretrained_cfg(clip_path, sam_path, *, lora: int = 0) -> RefSegConfig:
    base = preset_config("tiny")
    return RefSegConfig(
        name="tiny-pretrained",
        encoder=EncoderConfig(kind="clip", pretrained=str(clip_path), max_text_length=32, freeze=True,
                              lora_rank=lora),
        sam=SamConfig(checkpoint=str(sam_path), freeze_image_encoder=True, lora_rank=lora, **TINY_SAM),
        prompter=base.prompter,
        loss=base.loss,
    )


def _inputs(model, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, model.image_size, model.image_size, generator=g)
    tok = model.encoder.tokenize(["the red box", "the large white building on the left"][:n])
    return images, tok["input_ids"], tok["attention_mask"]


def _outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
    return out.mask_logits, out.iou_pred, out.dense_logits


def _assert_outputs(a, b, atol: float = 0.0):
    for x, y in zip(a, b):
        if atol:
            assert torch.allclose(x, y, atol=atol, rtol=0), float((x - y).abs().max())
        else:
            assert torch.equal(x, y)


def _perturb(model, names) -> None:
    """Give the parameters `names` non-default values (LoRA B starts at zero, BatchNorm stats at 0/1...)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(0.05 * torch.randn_like(params[n]))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)


def _file_tensors(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / WEIGHTS_FILE))


TRAINABLE_PREFIXES = ("prompter.", "sam.prompt_encoder.", "sam.mask_decoder.", "contrast_")


def test_pretrained_model_saves_only_trainable_tensors(tmp_path, clip_dir, sam_file):
    torch.manual_seed(10)
    model = build_model(_pretrained_cfg(clip_dir[0], sam_file[0]))
    # the towers hold the foundation weights
    assert_same_state(clip_dir[1].state_dict(), model.encoder.model.state_dict())
    assert_same_state(sam_file[1].image_encoder.state_dict(), model.sam.image_encoder.state_dict())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.sam.image_encoder.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(TRAINABLE_PREFIXES) for n in trainable)

    inputs = _inputs(model)
    model.train()
    out = model(*inputs)  # one training-mode forward/backward
    assert out.mask_logits.shape == (2, 1, 32, 32) and out.iou_pred.shape == (2, 1)
    out.mask_logits.mean().backward()
    assert model.sam.image_encoder.patch_embed.proj.weight.grad is None
    _perturb(model, trainable)
    before = _outputs(model, inputs)

    ckpt = save_checkpoint(model, tmp_path / "ckpt", "v1", metadata={"step": 3})
    tensors = _file_tensors(ckpt)
    assert not [k for k in tensors if k.startswith(("encoder.model.", "sam.image_encoder."))]
    assert all(k.startswith(TRAINABLE_PREFIXES) for k in tensors)
    assert trainable <= set(tensors)
    assert "prompter.dense_head.1.running_mean" in tensors  # buffers of the trained parts travel too
    meta = json.loads((ckpt / CONFIG_FILE).read_text())
    assert meta["stores"] == "trainable" and meta["metadata"] == {"step": 3}

    torch.manual_seed(11)
    fresh = build_model(_pretrained_cfg(clip_dir[0], sam_file[0]))
    assert not torch.allclose(_outputs(fresh, inputs)[0], before[0])  # the test would notice a no-op load
    loaded, meta2 = load_checkpoint(ckpt)
    assert meta2["version"] == "v1" and not loaded.training
    _assert_outputs(before, _outputs(loaded, inputs))


def test_pretrained_model_with_lora(tmp_path, clip_dir, sam_file):
    torch.manual_seed(12)
    model = build_model(_pretrained_cfg(clip_dir[0], sam_file[0], lora=2))
    named = dict(model.named_parameters())
    lora = {n for n in named if ".lora_" in n}
    assert any(n.startswith("encoder.model.text_model.") for n in lora)
    assert any(n.startswith("encoder.model.vision_model.") for n in lora)
    assert any(n.startswith("sam.image_encoder.blocks.") for n in lora)
    assert all(named[n].requires_grad for n in lora)
    base = [n for n in named if n.startswith(("encoder.model.", "sam.image_encoder.")) and n not in lora]
    assert base and not any(named[n].requires_grad for n in base)
    assert any(".base_layer." in n for n in base)
    # the wrapped base layers still hold the foundation weights
    sd = model.encoder.model.state_dict()
    assert torch.equal(sd["text_model.encoder.layers.0.self_attn.q_proj.base_layer.weight"],
                       clip_dir[1].state_dict()["text_model.encoder.layers.0.self_attn.q_proj.weight"])

    inputs = _inputs(model)
    plain = _outputs(model, inputs)
    _perturb(model, lora)  # LoRA B starts at zero: give the adapters an effect of their own
    before = _outputs(model, inputs)
    assert not torch.allclose(plain[0], before[0])
    _perturb(model, {n for n, p in named.items() if p.requires_grad} - lora)
    before = _outputs(model, inputs)

    ckpt = save_checkpoint(model, tmp_path / "lora", "v-lora")
    tensors = _file_tensors(ckpt)
    assert lora <= set(tensors)
    assert not [k for k in tensors if k.startswith(("encoder.model.", "sam.image_encoder.")) and ".lora_" not in k]
    loaded, _ = load_checkpoint(ckpt)
    _assert_outputs(before, _outputs(loaded, inputs))


def test_siglip_model_with_safetensors_sam_and_lora(tmp_path, siglip_dir, sam_file):
    """The paper's combination (SigLIP tower + SAM, LoRA on both), from a save_pretrained SigLIP directory and a
    SAM state dict stored as .safetensors, through build_model; a trainable-only checkpoint round-trips."""
    from safetensors.torch import save_file

    sam_st = tmp_path / "sam_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sam_file[1].state_dict().items()}, str(sam_st))
    cfg = _pretrained_cfg(siglip_dir[0], sam_st, lora=2)
    cfg.encoder.kind, cfg.encoder.max_text_length = "siglip", 16
    torch.manual_seed(13)
    model = build_model(cfg)
    sd = model.encoder.model.state_dict()
    saved = siglip_dir[1].state_dict()
    assert torch.equal(sd["text_model.encoder.layers.0.self_attn.k_proj.base_layer.weight"],
                       saved["text_model.encoder.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(sd["vision_model.embeddings.patch_embedding.weight"],
                       saved["vision_model.embeddings.patch_embedding.weight"])
    sam_expected = sam_file[1].image_encoder.state_dict()
    assert torch.equal(model.sam.image_encoder.pos_embed, sam_expected["pos_embed"])
    assert torch.equal(model.sam.image_encoder.blocks[1].attn.qkv.base_layer.weight,
                       sam_expected["blocks.1.attn.qkv.weight"])
    assert model.encoder.image_mean == pytest.approx(SIGLIP_MEAN)
    assert model.prompter is not None and model.encoder.embed_dim == 32

    named = dict(model.named_parameters())
    lora = {n for n in named if ".lora_" in n}
    assert any(n.startswith("encoder.model.text_model.") for n in lora)
    assert any(n.startswith("sam.image_encoder.blocks.") for n in lora)
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all(n.startswith(TRAINABLE_PREFIXES) or ".lora_" in n for n in trainable)

    inputs = _inputs(model)
    assert inputs[1].shape == (2, 16)  # SigLIP's fixed-length padding
    model.train()
    out = model(*inputs)
    assert out.mask_logits.shape == (2, 1, 32, 32)
    out.mask_logits.mean().backward()
    grads = {n for n, p in named.items() if p.grad is not None}
    assert any(n.startswith("sam.image_encoder.") and ".lora_" in n for n in grads)
    assert any(n.startswith("encoder.model.vision_model.encoder.") and ".lora_" in n for n in grads)
    assert not any(".base_layer." in n for n in grads)
    assert lora <= grads, sorted(lora - grads)  # no adapter the forward never uses (e.g. SigLIP's pooling head)
    _perturb(model, trainable)
    before = _outputs(model, inputs)

    ckpt = save_checkpoint(model, tmp_path / "siglip-ckpt", "v-siglip")
    tensors = _file_tensors(ckpt)
    assert trainable <= set(tensors)
    assert not [k for k in tensors if k.startswith(("encoder.model.", "sam.image_encoder.")) and ".lora_" not in k]
    meta = json.loads((ckpt / CONFIG_FILE).read_text())
    assert meta["stores"] == "trainable"
    assert meta["config"]["encoder"]["kind"] == "siglip"
    assert meta["config"]["sam"]["checkpoint"] == str(sam_st)
    loaded, _ = load_checkpoint(ckpt)
    _assert_outputs(before, _outputs(loaded, inputs))


def test_real_preset_names_resolve_to_local_copies(tmp_path, monkeypatch, clip_dir, sam_file):
    """The `clip-vit-b16+sam-vit-b` preset's own file and hub names, served from $REFSEG_WEIGHTS_DIR: the same
    code path as the real weights (only the SAM sizes shrunk to the tiny stand-in's)."""
    root = tmp_path / "weights"
    cfg = preset_config("clip-vit-b16+sam-vit-b")
    assert (cfg.encoder.pretrained, cfg.sam.checkpoint) == ("openai/clip-vit-base-patch16", "sam_vit_b_01ec64.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFSEG_WEIGHTS_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="sam_vit_b_01ec64.pth.*REFSEG_WEIGHTS_DIR"):
        load_model("clip-vit-b16+sam-vit-b")  # fails before any download is attempted

    shutil.copytree(clip_dir[0], root / "openai" / "clip-vit-base-patch16")
    shutil.copy(sam_file[0], root / "sam_vit_b_01ec64.pth")
    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(root))
    cfg.sam = SamConfig(checkpoint=cfg.sam.checkpoint, lora_rank=cfg.sam.lora_rank, **TINY_SAM)
    cfg.encoder.max_text_length = 32
    model = build_model(cfg)
    assert torch.equal(model.encoder.model.state_dict()["vision_model.embeddings.patch_embedding.weight"],
                       clip_dir[1].state_dict()["vision_model.embeddings.patch_embedding.weight"])
    assert torch.equal(model.sam.image_encoder.pos_embed, sam_file[1].image_encoder.pos_embed)
    assert any(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)  # the preset's LoRA
    assert model.encoder.image_mean == pytest.approx(CLIP_MEAN)  # the directory's preprocessor_config.json
    with torch.no_grad():
        out = model.eval()(*_inputs(model))
    assert out.mask_logits.shape == (2, 1, 32, 32) and bool(torch.isfinite(out.mask_logits).all())


def test_checkpoint_portable_across_weights_dirs(tmp_path, monkeypatch, clip_dir, sam_file):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        shutil.copy(sam_file[0], root / "sam_tiny.pth")
        shutil.copytree(clip_dir[0], root / "tiny-clip")
    cfg = _pretrained_cfg("tiny-clip", "sam_tiny.pth")
    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(a))
    ckpt = save_checkpoint(build_model(cfg), tmp_path / "ckpt", "v")
    shutil.rmtree(a)  # e.g. trained in one container, served from another
    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(b))
    load_checkpoint(ckpt)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model, meta = load_model("tiny")
    assert meta["version"] == "tiny-init"
    return model


def test_tiny_preset_round_trip(tmp_path, tiny_model):
    inputs = _inputs(tiny_model)
    before = _outputs(tiny_model, inputs)
    ckpt = save_checkpoint(tiny_model, tmp_path / "tiny", "tiny-v1")
    meta = json.loads((ckpt / CONFIG_FILE).read_text())
    assert meta["stores"] == "full" and meta["dtype"] == "float32"
    assert RefSegConfig.from_dict(meta["config"]) == tiny_model.cfg
    tensors = _file_tensors(ckpt)
    assert set(tensors) == set(tiny_model.state_dict())  # every weight, towers included
    assert all(v.dtype == torch.float32 for v in tensors.values() if v.is_floating_point())
    loaded, meta2 = load_model(str(ckpt))
    assert meta2["version"] == "tiny-v1"
    _assert_outputs(before, _outputs(loaded, inputs))
    # saving over an existing checkpoint replaces it atomically (no temp dirs left behind)
    save_checkpoint(loaded, ckpt, "tiny-v2")
    assert load_checkpoint(ckpt)[1]["version"] == "tiny-v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_tiny_preset_half(tmp_path, tiny_model):
    inputs = _inputs(tiny_model)
    before = _outputs(tiny_model, inputs)
    ckpt = save_checkpoint(tiny_model, tmp_path / "half", "tiny-half", half=True)
    meta = json.loads((ckpt / CONFIG_FILE).read_text())
    assert meta["dtype"] == "float16"
    tensors = _file_tensors(ckpt)
    floats = [v for v in tensors.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert any(not v.is_floating_point() for v in tensors.values())  # BatchNorm's counter stays an int
    full = save_checkpoint(tiny_model, tmp_path / "full", "tiny-full")
    assert (ckpt / WEIGHTS_FILE).stat().st_size < 0.6 * (full / WEIGHTS_FILE).stat().st_size
    loaded, _ = load_checkpoint(ckpt)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())  # computed in float32
    after = _outputs(loaded, inputs)
    scale = max(float(x.abs().max()) for x in before)
    _assert_outputs(before, after, atol=0.02 * scale + 1e-3)


def test_corrupt_or_missing_checkpoints(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not a refseg checkpoint"):
        load_checkpoint(tmp_path / "absent")
    ckpt = save_checkpoint(tiny_model, tmp_path / "ok", "v")
    good_cfg = (ckpt / CONFIG_FILE).read_text()
    good_weights = (ckpt / WEIGHTS_FILE).read_bytes()

    def broken(name):
        d = tmp_path / name
        shutil.copytree(ckpt, d)
        return d

    d = broken("bad-json")
    (d / CONFIG_FILE).write_text(good_cfg[: len(good_cfg) // 2])
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_checkpoint(d)

    d = broken("other-format")
    (d / CONFIG_FILE).write_text(json.dumps({**json.loads(good_cfg), "format": "something-else/9"}))
    with pytest.raises(CheckpointError, match="unsupported checkpoint format"):
        load_checkpoint(d)

    d = broken("no-weights")
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} missing"):
        load_checkpoint(d)

    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / WEIGHTS_FILE))
    d = broken("missing-tensor")
    save_file({k: v for k, v in state.items() if k != "prompter.prompt_tokens"}, str(d / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="1 missing.*prompter.prompt_tokens"):
        load_checkpoint(d)

    d = broken("extra-tensor")
    save_file({**state, "prompter.surprise": torch.zeros(2)}, str(d / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="1 unexpected.*prompter.surprise"):
        load_checkpoint(d)

    d = broken("wrong-shape")
    save_file({**state, "prompter.prompt_tokens": torch.zeros(5, 32)}, str(d / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="prompter.prompt_tokens has shape"):
        load_checkpoint(d)

    # a config that no longer matches the weights (another prompter size) is caught the same way
    d = broken("config-mismatch")
    meta = json.loads(good_cfg)
    meta["config"]["prompter"]["num_prompts"] = 6
    (d / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(d)

    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a preset"):
        load_model(str(tmp_path / "nowhere"))
    assert (ckpt / WEIGHTS_FILE).read_bytes() == good_weights  # nothing above touched the original


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_weights_file_is_a_checkpoint_error(tmp_path, tiny_model, damage):
    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt", "v")
    w = ckpt / WEIGHTS_FILE
    data = w.read_bytes()
    w.write_bytes({"garbage": b"\x00not safetensors" * 64, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("case", ["not-an-object", "no-config", "unknown-key"])
def test_malformed_config_is_a_checkpoint_error(tmp_path, tiny_model, case):
    ckpt = save_checkpoint(tiny_model, tmp_path / "ckpt", "v")
    meta = json.loads((ckpt / CONFIG_FILE).read_text())
    if case == "not-an-object":
        text = "[1, 2, 3]"
    elif case == "no-config":
        text = json.dumps({k: v for k, v in meta.items() if k != "config"})
    else:
        meta["config"]["sam"]["bogus"] = 1
        text = json.dumps(meta)
    (ckpt / CONFIG_FILE).write_text(text)
    with pytest.raises(CheckpointError, match={"not-an-object": "JSON object", "no-config": "'config'",
                                               "unknown-key": "bogus"}[case]):
        load_checkpoint(ckpt)


# -------------------------------------------------------------------------------------------- load_model specs
def test_load_model_preset_specs():
    torch.manual_seed(0)
    model, meta = load_model("preset:tiny")
    assert meta["version"] == "tiny-init" and meta["metadata"] == {}
    assert model.cfg == preset_config("tiny") and RefSegConfig.from_dict(meta["config"]) == model.cfg
    assert not model.training
    # tiny towers are built from configs (no files), every weight is random and trainable
    assert all(p.requires_grad for p in model.encoder.parameters())
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        load_model("preset:nope")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a preset"):
        load_model("nope")


def test_load_model_demo_spec_reads_the_demo_directory(tmp_path, monkeypatch, tiny_model):
    import refseg_model.checkpoint as ckpt_mod

    monkeypatch.setattr(ckpt_mod, "DEMO_CHECKPOINT", tmp_path / "demo")
    with pytest.raises(CheckpointError, match="demo checkpoint is missing"):
        load_model("demo")
    save_checkpoint(tiny_model, tmp_path / "demo", "demo-test-1")
    model, meta = load_model("demo")
    assert meta["version"] == "demo-test-1"
    inputs = _inputs(tiny_model)
    _assert_outputs(_outputs(tiny_model, inputs), _outputs(model, inputs))


@pytest.mark.skipif(not (DEMO_CHECKPOINT / CONFIG_FILE).is_file(), reason="the demo checkpoint is not built yet")
def test_shipped_demo_checkpoint_loads():
    import numpy as np

    from refseg_model.predictor import RefSegPredictor

    meta = json.loads((DEMO_CHECKPOINT / CONFIG_FILE).read_text())
    assert meta["stores"] == "full" and meta["version"]
    pred = RefSegPredictor.from_spec("demo")
    assert pred.version == meta["version"] and pred.model.cfg.name == "demo"
    img = np.random.default_rng(0).integers(0, 255, size=(96, 160, 3), dtype=np.uint8)
    [p] = pred.predict(img, "the white building")
    assert p.mask.shape == (96, 160) and 0.0 <= p.score <= 1.0
