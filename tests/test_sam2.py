"""SAM 2.1 segmenter (Meta's `sam2` package) and SigLIP text padding, on tiny stand-ins built here.

* A tiny SAM 2.1 model is built by `sam2` itself (`build_sam2` on the package's sam2.1_hiera_t.yaml with tiny Hiera
  and FPN sizes, memory modules included) and saved in the published format, `{"model": state_dict}` .pt, under the
  released file names: our segmenter loads it through the same code as a real `sam2.1_hiera_*.pt`.
* Outputs are compared with the package's own single-image path (SAM2ImagePredictor + the SAM 2 mask decoder).
* The tiny SAM 2.1 model trains with the public `train()` API (LoRA on Hiera and the FPN neck), predicts, and its
  checkpoint round-trips; the stability-based multimask switch acts at eval only.
* The prompter's query pooling ignores text padding.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from model_support import segmentation_loss

from refseg_model.build import (
    _VOCAB,
    BUILTIN_TOKENIZER,
    build_model,
    describe_preset,
    expected_files,
    preset_config,
    resolve_weights,
)
from refseg_model.checkpoint import CONFIG_FILE, load_checkpoint, load_model, save_checkpoint
from refseg_model.config import EncoderConfig, PrompterConfig, RefSegConfig, SamConfig
from refseg_model.modeling.encoder import DualModalEncoder
from refseg_model.modeling.prompter import CascadedPrompter, masked_adaptive_pool
from refseg_model.modeling.sam2_segmenter import UNBUILT, Sam2Segmenter, sam2_variant
from refseg_model.predictor import RefSegPredictor

torch.set_num_threads(1)

# A tiny Hiera (4 stages, width 8; global attention in the second block of stage 3) at 64 px: FPN levels 16, 8, 4
# (strides 4, 8, 16) -> image embedding 4 x 4, high-res 16 x 16 and 8 x 8, mask input 16 x 16.
HIERA = dict(embed_dim=8, num_heads=1, stages=[1, 1, 2, 1], global_att_blocks=[3], window_spec=[4, 4, 4, 2],
             window_pos_embed_bkg_spatial_size=[4, 4])
WIDTH, SIZE = 32, 64
# SAM2Base builds its prompt encoder / mask decoder with fixed sizes (mask_in_chans 16, 2 layers, MLP 2048, 8 heads,
# IoU head 256); only the width follows the FPN's d_model.
HEADS = dict(mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=2048, decoder_num_heads=8, iou_head_hidden_dim=256)


def tiny_sam2_cfg(checkpoint=None, **over) -> SamConfig:
    return SamConfig(**{**dict(kind="sam2", checkpoint=checkpoint, image_size=SIZE, patch_size=16,
                               prompt_embed_dim=WIDTH, hiera=dict(HIERA), **HEADS), **over})


def build_official_tiny():
    """SAM2Base (memory modules and all) built by the sam2 package from its own sam2.1 config, tiny sizes."""
    from sam2.build_sam import build_sam2

    lists = lambda v: "[" + ",".join(map(str, v)) + "]"  # noqa: E731
    overrides = [f"++model.image_size={SIZE}", f"++model.image_encoder.neck.d_model={WIDTH}",
                 f"++model.image_encoder.neck.position_encoding.num_pos_feats={WIDTH}",
                 f"++model.image_encoder.neck.backbone_channel_list={lists([64, 32, 16, 8])}"]
    overrides += [f"++model.image_encoder.trunk.{k}={lists(v) if isinstance(v, list) else v}" for k, v in HIERA.items()]
    # build_sam2's default apply_postprocessing=True: the decoder's dynamic multimask via stability (as RSRefSeg 2)
    return build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", mode="eval",
                      hydra_overrides_extra=overrides)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(weights dir holding sam2.1_hiera_tiny.pt in the published format, the SAM2Base it came from)."""
    torch.manual_seed(0)
    model = build_official_tiny()
    # random init leaves some tensors at zero (e.g. no_mem_embed is trunc-normal, the FPN biases are not):
    # perturb everything so that a tensor loaded into the wrong place cannot pass unnoticed
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = tmp_path_factory.mktemp("sam2-weights")
    torch.save({"model": model.state_dict()}, d / "sam2.1_hiera_tiny.pt")
    return d, model


# ----------------------------------------------------------------------------------------- checkpoint format
def test_published_format_loads_every_kept_key(official):
    d, ref = official
    seg = Sam2Segmenter(tiny_sam2_cfg(d / "sam2.1_hiera_tiny.pt"))
    ours = seg.state_dict()
    theirs = ref.state_dict()
    mapped = {k.replace("sam_prompt_encoder.", "prompt_encoder.", 1).replace("sam_mask_decoder.", "mask_decoder.", 1): k
              for k in theirs}
    dropped = {k for m, k in mapped.items() if m not in ours}
    # every tensor we build came from the file, unchanged ...
    assert set(ours) <= set(mapped)
    for k, v in ours.items():
        assert torch.equal(v, theirs[mapped[k]]), k
    # ... and what we do not build is exactly the video/memory part
    assert dropped and all(any(k == u or (u.endswith(".") and k.startswith(u)) for u in UNBUILT) for k in dropped)
    assert {k.split(".")[0] for k in dropped} == {
        "memory_attention", "memory_encoder", "obj_ptr_proj", "obj_ptr_tpos_proj", "mask_downsample",
        "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial"}
    assert {k.split(".")[0] for k in ours} == {"image_encoder", "prompt_encoder", "mask_decoder", "no_mem_embed"}
    assert torch.equal(seg.no_mem_embed, ref.no_mem_embed)


def test_published_format_mismatches_are_errors(official, tmp_path):
    d, ref = official
    state = ref.state_dict()
    # another Hiera than the file's: tensors of other shapes
    with pytest.raises(ValueError, match="does not match the configured SAM 2.*another shape"):
        Sam2Segmenter(tiny_sam2_cfg(d / "sam2.1_hiera_tiny.pt", hiera={**HIERA, "embed_dim": 16}))
    # a kept tensor missing from the file
    p = tmp_path / "missing.pt"
    torch.save({"model": {k: v for k, v in state.items() if k != "sam_mask_decoder.conv_s0.weight"}}, p)
    with pytest.raises(ValueError, match=r"1 missing keys, e\.g\. \['mask_decoder\.conv_s0\.weight'\]"):
        Sam2Segmenter(tiny_sam2_cfg(p))
    # a key that is neither built nor a known video/memory tensor
    p = tmp_path / "unexpected.pt"
    torch.save({"model": {**state, "sam_mask_decoder.extra_head.weight": torch.zeros(2)}}, p)
    with pytest.raises(ValueError, match=r"1 unexpected, e\.g\. \['mask_decoder\.extra_head\.weight'\]"):
        Sam2Segmenter(tiny_sam2_cfg(p))
    # a file with code in it is refused (weights_only)
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    p = tmp_path / "evil.pt"
    torch.save({"model": {**state, "x": Payload()}}, p)
    with pytest.raises(Exception, match="[Ww]eights only"):
        Sam2Segmenter(tiny_sam2_cfg(p))


def test_variants_come_from_the_sam2_package_configs():
    large = sam2_variant("sam2.1_hiera_l")
    assert large["checkpoint"] == "sam2.1_hiera_large.pt" and large["image_size"] == 1024
    assert large["hiera"]["embed_dim"] == 144 and large["hiera"]["stages"] == [2, 6, 36, 4]
    assert large["prompt_embed_dim"] == 256 and large["scalp"] == 1 and large["patch_size"] == 16
    assert sam2_variant("sam2.1_hiera_b+")["hiera"] == {"embed_dim": 112, "num_heads": 2}
    with pytest.raises(KeyError, match="unknown SAM 2.1 variant"):
        sam2_variant("sam2.1_hiera_xl")
    # arguments outside Hiera's architecture (e.g. its weights_path, which would read a file) are refused
    with pytest.raises(ValueError, match="unknown Hiera arguments"):
        Sam2Segmenter(tiny_sam2_cfg(hiera={**HIERA, "weights_path": "/etc/passwd"}))


# -------------------------------------------------------------------------------------- same as sam2's path
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside SAM2ImagePredictor
def test_encode_and_decode_match_the_sam2_single_image_path(official):
    """Image side == SAM2ImagePredictor.set_image (high-res features, no_mem_embed); decode == SAM 2's mask
    decoder with multimask_output=False in eval mode (the stability switch included)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    d, ref = official
    seg = Sam2Segmenter(tiny_sam2_cfg(d / "sam2.1_hiera_tiny.pt")).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    predictor = SAM2ImagePredictor(ref)
    predictor._bb_feat_sizes = [(16, 16), (8, 8), (4, 4)]  # the predictor assumes 1024 px input (256, 128, 64)
    predictor.set_image(image)
    x01 = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        emb, high_res = seg.encode_image(x01)
    assert emb.shape == (1, WIDTH, 4, 4)
    assert [tuple(h.shape) for h in high_res] == [(1, WIDTH // 8, 16, 16), (1, WIDTH // 4, 8, 8)]
    assert torch.allclose(emb, predictor._features["image_embed"], atol=1e-5)
    for ours, theirs in zip(high_res, predictor._features["high_res_feats"]):
        assert torch.allclose(ours, theirs, atol=1e-5)

    torch.manual_seed(1)
    b = 3
    emb, high_res = emb.expand(b, -1, -1, -1), tuple(h.expand(b, -1, -1, -1) for h in high_res)
    sparse = torch.randn(b, 5, WIDTH)
    dense_logits = torch.randn(b, 1, seg.mask_input_size, seg.mask_input_size) * 4
    assert seg.mask_input_size == 16  # 4 x the embedding side, as SAM 2's prompt encoder takes it
    with torch.no_grad():
        dense = seg.embed_dense(dense_logits)
        masks, iou = seg.decode(emb, sparse, dense, high_res)
        _, ref_dense = ref.sam_prompt_encoder(points=None, boxes=None, masks=dense_logits)
        ref_masks, ref_iou, _, _ = ref.sam_mask_decoder(
            image_embeddings=emb, image_pe=ref.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=ref_dense, multimask_output=False, repeat_image=False,
            high_res_features=list(high_res))
    assert masks.shape == (b, 1, 16, 16) and iou.shape == (b, 1)
    assert torch.allclose(masks, ref_masks, atol=1e-5) and torch.allclose(iou, ref_iou, atol=1e-6)


def _stability(logits: torch.Tensor, delta: float = 0.05) -> torch.Tensor:
    inter = (logits > delta).flatten(1).sum(1).float()
    union = (logits > -delta).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union, torch.ones_like(union))


def test_stability_switch_acts_at_eval_only(official):
    """multimask_output=False: token 0 in training; at eval, the best-IoU multimask output replaces token 0 on
    rows whose token-0 stability is below 0.98 (and only there); off when multimask_via_stability is False."""
    d, _ = official
    seg = Sam2Segmenter(tiny_sam2_cfg(d / "sam2.1_hiera_tiny.pt"))
    torch.manual_seed(2)
    b = 8
    with torch.no_grad():
        emb, (s0, s1) = seg.encode_image(torch.rand(b, 3, SIZE, SIZE))
        # The stride-4 features are added just before the decoder's last activation (GELU): shifted far positive
        # on rows 0-3 they make every token-0 logit large and of one sign (stability 1); left as they are on rows
        # 4-7, many logits fall within +-delta (stability about 0.2).
        high_res = (s0 + torch.tensor([1e3] * 4 + [0.0] * 4).view(b, 1, 1, 1), s1)
        sparse = torch.randn(b, 4, WIDTH)
        dense = seg.embed_dense(torch.randn(b, 1, 16, 16))
        all_masks, all_iou, _, _ = seg.mask_decoder.predict_masks(
            emb, seg.prompt_encoder.get_dense_pe(), sparse, dense, repeat_image=False, high_res_features=list(high_res))
        seg.train()
        train_masks, _ = seg.decode(emb, sparse, dense, high_res)
        seg.eval()
        eval_masks, eval_iou = seg.decode(emb, sparse, dense, high_res)
    stable = _stability(all_masks[:, 0]) >= 0.98
    assert stable.tolist() == [True] * 4 + [False] * 4, _stability(all_masks[:, 0])  # both branches exercised
    best = all_iou[:, 1:].argmax(1) + 1
    expected = torch.where(stable[:, None, None], all_masks[:, 0], all_masks[torch.arange(b), best])
    assert torch.equal(train_masks[:, 0], all_masks[:, 0])
    assert torch.equal(eval_masks[:, 0], expected)
    assert not torch.equal(eval_masks, train_masks)
    assert torch.equal(eval_masks[stable], train_masks[stable])

    off = Sam2Segmenter(tiny_sam2_cfg(d / "sam2.1_hiera_tiny.pt", multimask_via_stability=False)).eval()
    with torch.no_grad():
        off_masks, _ = off.decode(emb, sparse, dense, high_res)
    assert torch.equal(off_masks, train_masks)


# -------------------------------------------------------------------------------------------------- LoRA
def test_lora_on_hiera_attention_and_fpn_neck(official):
    d, _ = official
    seg = Sam2Segmenter(tiny_sam2_cfg(d / "sam2.1_hiera_tiny.pt", lora_rank=2))
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in seg.named_parameters() if ".lora_A." in n}
    blocks = sum(HIERA["stages"])
    expected = {f"image_encoder.trunk.blocks.{i}.attn.{p}" for i in range(blocks) for p in ("qkv", "proj")}
    expected |= {f"image_encoder.neck.convs.{i}.conv" for i in range(4)}
    assert wrapped == expected
    trainable = {n for n, p in seg.named_parameters() if p.requires_grad}
    assert {n for n in trainable if n.startswith("image_encoder.")} == {
        n for n, _ in seg.named_parameters() if n.startswith("image_encoder.") and ".lora_" in n}
    assert "no_mem_embed" in trainable
    assert all(p.requires_grad for p in seg.mask_decoder.parameters())  # conv_s0/conv_s1 included
    assert all(p.requires_grad for p in seg.prompt_encoder.parameters())
    # the adapters start as no-ops: LoRA B is zero, so the output equals the loaded model's
    plain = Sam2Segmenter(tiny_sam2_cfg(d / "sam2.1_hiera_tiny.pt")).eval()
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(seg.eval().encode_image(x)[0], plain.encode_image(x)[0], atol=1e-6)


# ------------------------------------------------------------------------------ full model: presets, training
def _tiny_siglip_dir(d: Path) -> Path:
    """A transformers `save_pretrained` SigLIP with a tokenizer and an image processor (tiny, random)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    from refseg_model.modeling.encoder import load_tokenizer

    cfg = SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=64, projection_size=32, **_VOCAB),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
    )
    torch.manual_seed(3)
    SiglipModel(cfg).save_pretrained(str(d))
    load_tokenizer(BUILTIN_TOKENIZER).save_pretrained(str(d))
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(d))
    return d


def test_paper_preset_builds_from_local_files_in_published_formats(official, tmp_path, monkeypatch):
    """The paper's preset, with its own file and hub names served from $REFSEG_WEIGHTS_DIR: a sam2.1_hiera_large.pt
    in the published format and a SigLIP 2 save_pretrained directory (tiny stand-ins: sizes shrunk, names kept)."""
    name = "siglip2-so400m-512+sam2.1-hiera-l"
    cfg = preset_config(name)
    assert cfg.sam.kind == "sam2" and cfg.sam.checkpoint == "sam2.1_hiera_large.pt" and cfg.sam.lora_rank == 16
    assert cfg.encoder.kind == "siglip" and cfg.encoder.pretrained == "google/siglip2-so400m-patch16-512"
    assert cfg.encoder.lora_rank == 16 and cfg.encoder.max_text_length == 64
    assert cfg.sam.hiera == sam2_variant("sam2.1_hiera_l")["hiera"]
    assert any("sam2.1_hiera_large.pt" in f for f in expected_files(name))
    assert any("google/siglip2-so400m-patch16-512/" in f for f in expected_files(name))
    assert "SAM 2.1 Hiera" in describe_preset(name)
    # the SAM 1 preset no longer says it is the paper's; the SAM 2.1 ones name the SAM 2.1 release
    assert "SAM 1 ViT" in describe_preset("siglip2-so400m-512+sam-vit-l")
    assert "SAM 2.1 release" in expected_files("siglip2-base-256+sam2.1-hiera-b+")[0]

    root = tmp_path / "weights"
    (root / "google").mkdir(parents=True)
    (root / "sam2.1_hiera_large.pt").write_bytes((official[0] / "sam2.1_hiera_tiny.pt").read_bytes())
    _tiny_siglip_dir(root / "google" / "siglip2-so400m-patch16-512")
    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(root))
    small = tiny_sam2_cfg(cfg.sam.checkpoint, lora_rank=2)
    cfg.sam, cfg.encoder.lora_rank = small, 2
    cfg.prompter = PrompterConfig(attn_dim=32, num_heads=2, mlp_dim=64, query_layers=1, stage1_layers=1,
                                  stage2_layers=1)
    model = build_model(cfg)
    assert model.cfg.sam.checkpoint == "sam2.1_hiera_large.pt"  # the checkpoint keeps the relative name
    ref = official[1].image_encoder.state_dict()
    assert torch.equal(model.sam.image_encoder.trunk.blocks[0].attn.qkv.base_layer.weight,
                       ref["trunk.blocks.0.attn.qkv.weight"])
    assert ".lora_A." in "".join(n for n, _ in model.encoder.model.text_model.head.named_parameters(prefix="h."))
    tok = model.encoder.tokenize(["the white storage tank left of the road", "a plane"])
    assert tok["input_ids"].shape == (2, 64) and tok["attention_mask"][1].sum() < 64  # padded to 64, masked
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, SIZE, SIZE), tok["input_ids"], tok["attention_mask"])
    assert out.mask_logits.shape == (2, 1, 16, 16) and out.dense_logits.shape == (2, 1, 16, 16)

    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="sam2.1_hiera_large.pt.*SAM 2.1 release"):
        resolve_weights(preset_config(name))


def _pretrained_tiny_cfg() -> RefSegConfig:
    """`tiny-sam2.1` on the published-format SAM 2.1 file (frozen Hiera + LoRA), CLIP tower trained from scratch."""
    cfg = preset_config("tiny-sam2.1")
    cfg.name = "tiny-sam2.1-pretrained"
    cfg.sam = tiny_sam2_cfg("sam2.1_hiera_tiny.pt", lora_rank=2)
    return cfg


def test_trainable_checkpoint_round_trip(official, tmp_path, monkeypatch):
    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(official[0]))
    torch.manual_seed(4)
    model = build_model(_pretrained_tiny_cfg())
    with torch.no_grad():  # move LoRA B off zero and the heads off their init
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", "v1")
    meta = json.loads((ckpt / CONFIG_FILE).read_text())
    assert meta["stores"] == "trainable" and meta["config"]["sam"]["kind"] == "sam2"
    from safetensors.torch import load_file

    tensors = load_file(str(ckpt / "model.safetensors"))
    assert "sam.no_mem_embed" in tensors and "sam.mask_decoder.conv_s0.weight" in tensors
    assert any(".lora_" in k and k.startswith("sam.image_encoder.neck.") for k in tensors)
    assert not [k for k in tensors if k.startswith("sam.image_encoder.") and ".lora_" not in k]
    loaded, _ = load_checkpoint(ckpt)
    model.eval()
    tok = model.encoder.tokenize(["the red roof"] * 2)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a = model(x, tok["input_ids"], tok["attention_mask"]).mask_logits
        b = loaded(x, tok["input_ids"], tok["attention_mask"]).mask_logits
    assert torch.allclose(a, b, atol=1e-6)


@pytest.fixture(scope="module")
def synth64(tmp_path_factory) -> Path:
    from refseg_model.data.synth import write_dataset

    d = tmp_path_factory.mktemp("synth64-sam2")
    write_dataset(d, n_images=8, size=SIZE, expressions_per_image=2, seed=1, progress=False)
    return d


def test_tiny_sam2_trains_and_predicts(official, synth64, tmp_path, monkeypatch):
    """Fine-tune the SAM 2.1 model (published-format file, LoRA) with `train()`, then predict with the result."""
    from refseg_model.train import TrainConfig, train

    monkeypatch.setenv("REFSEG_WEIGHTS_DIR", str(official[0]))
    torch.manual_seed(5)
    init = save_checkpoint(build_model(_pretrained_tiny_cfg()), tmp_path / "init", "sam2-init")
    initial, _ = load_checkpoint(init)
    before = segmentation_loss(initial, synth64)
    frozen = initial.sam.image_encoder.trunk.blocks[0].attn.qkv.base_layer.weight.clone()

    out = tmp_path / "trained"
    result = train(TrainConfig(data=str(synth64), out=str(out), init=str(init), steps=30, batch_size=4, lr=3e-3,
                               eval_every=15, augment=False, progress=False, threads=1, seed=0, resume=False))
    assert result.steps == 30 and result.version == "sam2-init-ft"
    last, _ = load_checkpoint(out.with_name(out.name + ".train") / "last")
    assert segmentation_loss(last, synth64) < before
    assert torch.equal(last.sam.image_encoder.trunk.blocks[0].attn.qkv.base_layer.weight, frozen)  # base frozen
    assert not torch.equal(last.sam.no_mem_embed, initial.sam.no_mem_embed)  # trained, as in the paper

    predictor = RefSegPredictor.from_spec(str(out), cache_size=4)
    image = np.random.default_rng(1).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    [cold] = predictor.predict(image, "the red roof")
    key, item = predictor.embed(image)
    # the cache holds SAM 2's image embedding and both high-resolution feature maps
    assert [tuple(t.shape) for t in item.embedding.sam_high_res] == [(1, WIDTH // 8, 16, 16), (1, WIDTH // 4, 8, 8)]
    [warm] = predictor.predict(image, "the red roof")
    assert cold.mask.shape == (50, 70) and np.array_equal(cold.mask, warm.mask) and cold.score == warm.score
    assert predictor.cache.hits >= 2 and predictor.cache.misses == 1
    # batched prediction over several images: the high-res features are batched with their images
    many = predictor.predict_many(lambda k: image if k == "a" else image[::-1].copy(),
                                  [("a", "the red roof"), ("b", "the red roof")])
    assert np.array_equal(many[0].mask, cold.mask) and many[1].mask.shape == (50, 70)


def test_tiny_sam2_preset_trains_from_scratch(synth64, tmp_path):
    """`preset:tiny-sam2.1` (no files at all) through `train()` and `load_model`."""
    from refseg_model.train import TrainConfig, train

    out = tmp_path / "t"
    result = train(TrainConfig(data=str(synth64), out=str(out), init="preset:tiny-sam2.1", steps=4, batch_size=2,
                               eval_every=4, augment=False, progress=False, threads=1, seed=0, resume=False))
    assert result.version == "tiny-sam2.1-trained"
    model, meta = load_model(str(out))
    assert meta["stores"] == "full" and model.cfg.sam.kind == "sam2"


# ------------------------------------------------------------------------------------ text padding / SigLIP
def _tiny_prompter(ct=16, cv=16) -> CascadedPrompter:
    torch.manual_seed(6)
    cfg = PrompterConfig(num_queries=3, num_prompts=4, attn_dim=16, num_heads=2, mlp_dim=32, query_layers=1,
                         stage1_layers=1, stage2_layers=1, dense_upsample="post")
    return CascadedPrompter(cfg, text_dim=ct, vision_dim=cv, embed_dim=cv, prompt_dim=8, grid=4,
                            mask_input_size=16).eval()


def test_query_pooling_ignores_padding():
    """Adding padding (any values, mask 0) changes neither the pooled queries nor anything the prompter outputs;
    counting padding as text (the old SigLIP mask of all ones) does change them."""
    torch.manual_seed(7)
    n, pad = 5, 11
    text = torch.randn(2, n, 16)
    padded = torch.cat([text, torch.randn(2, pad, 16) * 3], dim=1)
    mask = torch.ones(2, n, dtype=torch.bool)
    padded_mask = torch.cat([mask, torch.zeros(2, pad, dtype=torch.bool)], dim=1)
    assert torch.allclose(masked_adaptive_pool(text, mask, 3), masked_adaptive_pool(padded, padded_mask, 3), atol=1e-6)
    assert not torch.allclose(masked_adaptive_pool(text, mask, 3),
                              masked_adaptive_pool(padded, torch.ones_like(padded_mask), 3), atol=1e-3)

    prompter = _tiny_prompter()
    image, pooled = torch.randn(2, 16, 16), torch.randn(2, 16)
    with torch.no_grad():
        a = prompter(image, text, mask, pooled)
        b = prompter(image, padded, padded_mask, pooled)
        c = prompter(image, padded, torch.ones_like(padded_mask), pooled)
    for f in ("q1", "q2", "sparse", "dense_logits"):
        assert torch.allclose(getattr(a, f), getattr(b, f), atol=1e-5), f
    assert not torch.allclose(a.q1, c.q1, atol=1e-3)


def _tiny_siglip_encoder(lora: int = 0) -> DualModalEncoder:
    hf = dict(model_type="siglip",
              text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               max_position_embeddings=24, projection_size=16, **_VOCAB),
              vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2))
    torch.manual_seed(8)
    return DualModalEncoder(EncoderConfig(kind="siglip", hf_config=hf, tokenizer=BUILTIN_TOKENIZER,
                                          max_text_length=24, freeze=lora > 0, lora_rank=lora)).eval()


def test_siglip_text_is_padded_to_fixed_length_and_masked():
    enc = _tiny_siglip_encoder()
    tok = enc.tokenize(["the white storage tank left of the road", "a plane"])
    assert tok["input_ids"].shape == (2, 24)  # fixed-length padding, as SigLIP was trained
    n_real = tok["attention_mask"].sum(1)
    assert int(n_real[1]) < int(n_real[0]) < 24
    assert all(bool(tok["attention_mask"][i, : n_real[i]].all()) and not tok["attention_mask"][i, n_real[i]:].any()
               for i in range(2))
    with torch.no_grad():
        text = enc.encode_text(tok["input_ids"], tok["attention_mask"])
        # the tower runs unmasked (as pre-trained): the pooled text is SigLIP's own
        ref = enc.model.text_model(input_ids=tok["input_ids"]).pooler_output
    assert torch.equal(text.mask, tok["attention_mask"].bool())
    assert torch.allclose(text.pooled, ref, atol=1e-6)
    # the prompter sees only the real tokens: its output equals that on the padding-free token sequence
    prompter = _tiny_prompter()
    image = torch.randn(1, 16, 16)
    with torch.no_grad():
        full = prompter(image, text.tokens[1:], text.mask[1:], text.pooled[1:])
        short = prompter(image, text.tokens[1:, : n_real[1]], text.mask[1:, : n_real[1]], text.pooled[1:])
    assert torch.allclose(full.q1, short.q1, atol=1e-5) and torch.allclose(full.dense_logits, short.dense_logits,
                                                                           atol=1e-5)


def test_siglip_lora_covers_the_text_head():
    enc = _tiny_siglip_encoder(lora=2)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in enc.model.named_parameters() if ".lora_A." in n}
    assert "text_model.head" in wrapped
    assert not [n for n in wrapped if n.startswith("vision_model.head.")]  # the unused image pooling head: no
    assert {n for n in wrapped if re.search(r"self_attn\.(q|k|v|out)_proj$", n)} == wrapped - {"text_model.head"}
    assert len(wrapped) == 1 + 2 * 4  # the head + q/k/v/out of one layer per tower
