"""The full decoupled model: dual-modal encoder -> cascaded prompter -> SAM mask decoder.

Inputs are images already resized (longest side) and zero-padded to S x S in [0, 1]; see `transforms.py`.
Image-side work (`encode_image`) is separate from text-side work (`decode`) so that the predictor can cache the
former per image and pay only for the latter per expression.

Interactive use (clicks and boxes, with or without an expression) splits the per-expression work once more:
`encode_text_prompts` (text tower + prompter, cached per (image, expression)) and `decode_interactive` (SAM's
prompt encoder for points/box/previous mask + mask decoder, the only part a click re-runs).

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
class TextPrompts:
    """The prompter's output for (image, expression) pairs, all a click needs from the text side.

    sparse        B x P x C      (C = SAM prompt width, P = prompter.num_prompts)
    dense_logits  B x 1 x M x M  (M = SAM mask-input size = 4e)
    """

    sparse: torch.Tensor
    dense_logits: torch.Tensor

    def index(self, idx: torch.Tensor) -> "TextPrompts":
        return TextPrompts(self.sparse[idx], self.dense_logits[idx])


# Labels of geometric prompt tokens, as SAM's prompt encoder uses them.
PAD_LABEL, NEG_LABEL, POS_LABEL, BOX_TL_LABEL, BOX_BR_LABEL = -1, 0, 1, 2, 3


def geometry_tensors(
    points: Sequence[Tuple[float, float, bool]], box: Optional[Tuple[float, float, float, float]],
    num_points: Optional[int] = None, device=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clicks and a box, already in the model's S x S input frame (pixels), -> SAM prompt-encoder inputs.

    points: [(x, y, positive)], box: (x0, y0, x1, y1) or None; num_points pads the points to that many.
    -> coords 1 x (Q + 2) x 2 float, labels 1 x (Q + 2) long, Q = num_points or len(points): the points
    (label 1 positive, 0 negative, -1 padding) followed by the two box corners (labels 2, 3; -1, -1 without
    a box). Training and inference use this same layout, so a batch can mix rows with and without a box.
    No points, no box and no num_points -> 1 x 0 x 2 / 1 x 0 (text only, exactly as `decode`).
    """
    if not points and box is None and num_points is None:  # text only: no geometry tokens at all
        return torch.zeros(1, 0, 2, device=device), torch.zeros(1, 0, dtype=torch.long, device=device)
    q = len(points) if num_points is None else int(num_points)
    if len(points) > q:
        raise ValueError(f"{len(points)} points, room for {q}")
    coords = torch.zeros(1, q + 2, 2)
    labels = torch.full((1, q + 2), PAD_LABEL, dtype=torch.long)
    for j, (x, y, positive) in enumerate(points):
        coords[0, j] = torch.tensor([float(x), float(y)])
        labels[0, j] = POS_LABEL if positive else NEG_LABEL
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        coords[0, q] = torch.tensor([min(x0, x1), min(y0, y1)])
        coords[0, q + 1] = torch.tensor([max(x0, x1), max(y0, y1)])
        labels[0, q], labels[0, q + 1] = BOX_TL_LABEL, BOX_BR_LABEL
    return coords.to(device), labels.to(device)


@dataclass
class RefSegOutput:
    mask_logits: torch.Tensor  # B x 1 x 4e x 4e (low-res, over the padded S x S input)
    iou_pred: torch.Tensor  # B x 1
    dense_logits: torch.Tensor  # B x 1 x 4e x 4e
    q1: torch.Tensor  # B x K x Ct
    q2: torch.Tensor  # B x K x Ct
    clip_tokens: torch.Tensor  # B x N x Cv (raw encoder map, for the region-text loss)
    text: Optional[TextFeatures] = None
    # training only (`interactive_training.interactive_forward`): the low-res logits of the interactive rows' passes before
    # the last (the initial prompt's answer, then after each corrective click but the last), each R x 1 x M x M
    # for the last R rows of the batch; supervised like mask_logits (`loss.interactive_pass_loss`)
    interactive_passes: Tuple[torch.Tensor, ...] = ()


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

    # ------------------------------------------------------------------------------------------ interactive
    def encode_text_prompts(
        self, image: ImageEmbedding, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> Tuple[TextPrompts, RefSegOutput]:
        """Text tower + prompter for (image i, text row i): the part of `decode` that a click does not re-run.

        -> (TextPrompts: sparse B x P x C, dense logits B x 1 x M x M; the prompter's full output for losses,
        with mask_logits / iou_pred left empty).
        """
        text = self.encoder.encode_text(input_ids, attention_mask)
        prompts = self.prompter(image.clip, text.tokens, text.mask, text.pooled)
        empty = prompts.dense_logits.new_zeros(0)
        return TextPrompts(prompts.sparse, prompts.dense_logits), RefSegOutput(
            mask_logits=empty, iou_pred=empty, dense_logits=prompts.dense_logits, q1=prompts.q1, q2=prompts.q2,
            clip_tokens=image.clip, text=text)

    def embed_geometry(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM's point/box-corner embeddings. coords B x Q x 2 (x, y in input-frame pixels), labels B x Q
        (-1 padding, 0 negative, 1 positive, 2 / 3 box corners) -> B x Q x C.

        The same computation as segment-anything's / sam2's `PromptEncoder._embed_points` + `_embed_boxes`
        (random Fourier features of the pixel centre + a learned embedding per label; padding is the learned
        not-a-point embedding alone), written with `where`/indexing so that rows can mix prompt kinds."""
        pe = self.sam.prompt_encoder
        emb = pe.pe_layer.forward_with_coords(coords.float() + 0.5, pe.input_image_size)
        emb = torch.where((labels == PAD_LABEL)[..., None], torch.zeros_like(emb), emb)
        table = torch.cat([pe.not_a_point_embed.weight] + [w.weight for w in pe.point_embeddings])  # 5 x C
        return emb + table[(labels + 1).long()]

    def _dense(self, text_logits: Optional[torch.Tensor], mask_input: Optional[torch.Tensor],
               mask_valid: Optional[torch.Tensor], b: int) -> torch.Tensor:
        """Dense prompt embedding B x C x e x e for one group of rows (all with text, or all without)."""
        pe = self.sam.prompt_encoder
        if mask_input is not None:
            keep = mask_valid[:, None, None, None]
        if text_logits is not None:
            if mask_input is None:
                return self.sam.embed_dense(text_logits)
            if self.cfg.interactive_dense == "replace":
                return self.sam.embed_dense(torch.where(keep, mask_input, text_logits))
            return self.sam.embed_dense(text_logits + torch.where(keep, mask_input, torch.zeros_like(mask_input)))
        e = self.sam.cfg.embedding_size
        none = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, e, e)
        if mask_input is None:
            return none
        return torch.where(keep, self.sam.embed_dense(mask_input), none)

    def decode_interactive(
        self,
        image: ImageEmbedding,
        coords: torch.Tensor,
        labels: torch.Tensor,
        text: Optional[TextPrompts] = None,
        text_valid: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        mask_valid: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder on text prompts + clicks/box + previous mask; row i of everything goes with image i.

        image: ImageEmbedding of B rows; coords B x Q x 2 / labels B x Q (see `geometry_tensors`, Q may be 0);
        text: TextPrompts (B rows) or None; text_valid: B bool, rows that use their text (default all when text
        is given); mask_input: B x 1 x M x M low-res logits of the previous answer (`mask_logits` of the last
        call) or None; mask_valid: B bool, rows that use it (default all).
        -> low-res mask logits B x 1 x M x M, IoU B x 1.

        Sparse prompt = [prompter's P text tokens] + [Q geometry tokens] for rows with text, the geometry tokens
        alone for rows without (no text tokens at all: SAM's own click tool). Rows with and without text are
        decoded as two groups, since their token counts differ.

        Dense prompt (cfg.interactive_dense):
          no text, no previous mask  -> SAM's no-mask embedding
          no text, previous mask     -> the previous logits (SAM / RITM)
          text, no previous mask     -> the prompter's dense logits (as `decode`)
          text, previous mask        -> "add": embed(text dense logits + previous logits) (default)
                                        "replace": embed(previous logits), the text's dense map dropped
        Why "add" is the default (measured, but only weakly: read the caveat). Two copies of the demo were
        fine-tuned the same way (400 steps, `--interactive-frac 0.5`, lr 5e-4, synth:default), one per mode, and
        scored by benchmarks/annotator_effort.py on 40 held-out `shifted` samples (IoU after 0 / 1 / 3 / 5
        clicks, text + clicks): "add" 0.115 / 0.116 / 0.111 / 0.110, "replace" 0.080 / 0.092 / 0.079 / 0.071.
        With "replace" the answer fell below its own text-only answer by the 5th click; with "add" it stayed at
        it, since the text's dense map keeps voting wherever the previous mask is not confident (previous logits
        are large, |x| ~ 10, next to the similarity map's |x| ~ 1-5, so where the previous mask is sure it wins).
        Caveat: the demo's prompt encoder and decoder were trained from scratch on text prompts only, and 400
        CPU steps did not teach them to use clicks (clicks only: IoU 0.09 after 5 clicks in both runs; those
        runs supervised only the last pass of each interactive step, since fixed: see train.py), so the
        numbers compare how each mode *keeps* the text, not how it combines text with a click-aware decoder.
        Re-measure with a checkpoint that has learned clicks (or a published SAM's prompt encoder).
        """
        b = coords.shape[0]
        geo = self.embed_geometry(coords, labels)
        if text is None:
            text_valid = torch.zeros(b, dtype=torch.bool, device=coords.device)
        elif text_valid is None:
            text_valid = torch.ones(b, dtype=torch.bool, device=coords.device)
        if mask_input is not None and mask_valid is None:
            mask_valid = torch.ones(b, dtype=torch.bool, device=coords.device)
        outs = []
        for with_text in (True, False):
            idx = torch.nonzero(text_valid == with_text).flatten()
            if idx.numel() == 0:
                continue
            whole = idx.numel() == b
            sel = (lambda t: t) if whole else (lambda t: t[idx])
            mi = None if mask_input is None else sel(mask_input)
            mv = None if mask_valid is None else sel(mask_valid)
            if with_text:
                sparse = torch.cat([sel(text.sparse), sel(geo)], dim=1)
                dense = self._dense(sel(text.dense_logits), mi, mv, idx.numel())
            else:
                sparse = sel(geo)
                if sparse.shape[1] == 0:
                    raise ValueError("a row without text needs at least one point or a box")
                dense = self._dense(None, mi, mv, idx.numel())
            masks, iou = self.sam.decode(sel(image.sam), sparse, dense, tuple(sel(h) for h in image.sam_high_res))
            outs.append((idx, masks, iou))
        if len(outs) == 1:
            return outs[0][1], outs[0][2]
        (i0, m0, u0), (i1, m1, u1) = outs
        order = torch.argsort(torch.cat([i0, i1]))
        return torch.cat([m0, m1])[order], torch.cat([u0, u1])[order]

    def forward(self, images01: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> RefSegOutput:
        return self.decode(self.encode_image(images01), input_ids, attention_mask)
