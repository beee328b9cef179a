"""Interactive training steps (`refseg train --interactive-frac`): SAM's / RITM's iterative recipe on part of
each batch. `interactive_plan` draws which rows train interactively and how they start (text, click, box, text +
click, or another expression + a click on the true target); `interactive_forward` decodes those rows through
simulated corrective clicks (`interactive.next_clicks`), every pass supervised (see
`RefSegOutput.interactive_passes`), the other rows from the text as usual.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .interactive import INITIAL_KINDS, boxes_of, next_clicks, random_points_in
from .modeling.refseg import BOX_BR_LABEL, BOX_TL_LABEL, NEG_LABEL, PAD_LABEL, POS_LABEL, TextPrompts

GEOMETRY_KINDS = ("click", "box")  # the initial prompts of a row without an expression (SAM's click tool)


def rows_without_text_last(tensors, exprs: List[str], world: int = 1):
    """A batch whose rows without an expression (clicks-only annotations) are moved last, where
    `interactive_plan(..., no_text)` trains them from a click or a box alone.

    tensors: a tuple of B x ... tensors in row order; exprs: B strings. Returns (tensors, exprs, text_rows),
    text_rows B bool (None when every row has an expression: nothing moves)."""
    if all(exprs):
        return tensors, exprs, None
    if world > 1:  # the region-text loss gathers equal-sized row sets across processes
        raise ValueError("samples without an expression train in a single process only (not under torchrun)")
    order = sorted(range(len(exprs)), key=lambda i: not exprs[i])
    idx = torch.tensor(order, device=tensors[0].device)
    exprs = [exprs[i] for i in order]
    return tuple(t[idx] for t in tensors), exprs, torch.tensor([bool(e) for e in exprs], device=idx.device)


def interactive_plan(batch: int, frac: float, seed: int, rank: int, step: int, no_text: int = 0,
                     max_corrections: int = 3) -> Optional[dict]:
    """Which rows of this step's batch train interactively, and how: the last max(round(frac * batch), no_text)
    rows, each with an initial prompt kind (`interactive.INITIAL_KINDS`: text, click, box, text + click, wrong
    text + click), 1 to `max_corrections` corrective clicks for the whole batch. The last `no_text` rows have no expression (the
    caller puts them last): they always train interactively, from a click or a box.

    Drawn from a generator seeded by (run seed, rank, step) alone, so that a resumed run draws exactly what an
    uninterrupted one did. The plan carries that generator's seed for the in-step sampling (first clicks inside
    the target, box jitter) too.
    """
    k = max(int(round(frac * batch)), int(no_text))
    if k <= 0:
        return None
    g_seed = (int(seed) * 1_000_003 + int(rank) * 7919 + int(step)) % (2 ** 63)
    g = torch.Generator().manual_seed(g_seed)
    kinds = [INITIAL_KINDS[i] for i in torch.randint(len(INITIAL_KINDS), (k,), generator=g).tolist()]
    corrections = int(torch.randint(1, max(1, int(max_corrections)) + 1, (1,), generator=g))
    plan_seed = int(torch.randint(2 ** 62, (1,), generator=g))
    if no_text:  # drawn after the rest, so that a batch with expressions only draws what it always did
        geometry = torch.randint(len(GEOMETRY_KINDS), (int(no_text),), generator=g).tolist()
        kinds[k - int(no_text):] = [GEOMETRY_KINDS[i] for i in geometry]
    return {"rows": k, "kinds": kinds, "corrections": corrections, "seed": plan_seed}


def _with_wrong_text(model, emb, input_ids, attention_mask, text: TextPrompts, wrong: torch.Tensor) -> TextPrompts:
    """`text` (R rows) with each row i where `wrong` holds replaced by the prompts of row i - 1's expression
    (cyclically) on row i's image; only those rows run the text tower and prompter again. With a single row, or
    two expressions that happen to mean the same object, the "wrong" text is right, which does no harm."""
    rows = wrong.nonzero().squeeze(1)
    other = (rows - 1) % input_ids.shape[0]
    swapped, _ = model.encode_text_prompts(emb.index(rows), input_ids[other], attention_mask[other])
    sparse, dense = text.sparse.clone(), text.dense_logits.clone()
    sparse[rows], dense[rows] = swapped.sparse, swapped.dense_logits
    return TextPrompts(sparse, dense)


def interactive_forward(model, images, input_ids, attention_mask, target, valid, rows: int, kinds: List[str],
                         corrections: int, seed: int):
    """The model's output on a batch whose last `rows` rows are decoded interactively (SAM's / RITM's
    iterative training): initial prompt -> prediction -> corrective click at the deepest point of the larger
    error region (`interactive.next_clicks`) with the previous low-res logits (detached) as mask input,
    `corrections` times. Every pass is supervised, as SAM trains: the loss sees the last pass in mask_logits and
    the earlier ones in `interactive_passes` (among them the initial prompt's answer without a previous mask:
    a first click or a box alone, which the click tool answers with SAM's no-mask embedding; supervising only
    the last pass, which always has a previous mask, left that embedding and that case untrained). Other rows:
    text as usual.

    images B x 3 x S x S, target/valid B x 1 x S x S; returns a RefSegOutput whose mask_logits (B x 1 x M x M)
    hold the text-only answer for the first B - rows rows and the final interactive answer for the rest, and
    whose interactive_passes hold the `corrections` earlier answers of the last `rows` rows (rows x 1 x M x M).
    """

    b, dev = images.shape[0], images.device
    s, m = model.image_size, model.sam.mask_input_size
    emb = model.encode_image(images)
    text, out = model.encode_text_prompts(emb, input_ids, attention_mask)
    plain = torch.arange(0, b - rows, device=dev)
    inter = torch.arange(b - rows, b, device=dev)
    parts = []
    if plain.numel():
        none = torch.zeros(plain.numel(), 0, 2, device=dev), torch.zeros(plain.numel(), 0, dtype=torch.long, device=dev)
        parts.append(model.decode_interactive(emb.index(plain), *none, text.index(plain))[0])

    g = torch.Generator().manual_seed(seed)
    emb_i, text_i = emb.index(inter), text.index(inter)
    tgt = target[inter, 0] > 0.5
    val = valid[inter, 0] > 0.5
    # the error maps at the decoder's M x M grid (frame S x S -> M x M)
    tgt_m = (torch.nn.functional.interpolate(target[inter], size=(m, m), mode="area")[:, 0] >= 0.5)
    val_m = (torch.nn.functional.interpolate(valid[inter], size=(m, m), mode="area")[:, 0] >= 0.5)
    q = 1 + corrections  # slot 0: the initial click; slots 1..: corrective clicks; then the two box corners
    coords = torch.zeros(rows, q + 2, 2, device=dev)
    labels = torch.full((rows, q + 2), PAD_LABEL, dtype=torch.long, device=dev)
    with_text = torch.tensor([k in ("text", "text+click", "wrong-text+click") for k in kinds], device=dev)
    click0 = torch.tensor([k in ("click", "text+click", "wrong-text+click") for k in kinds], device=dev)
    box0 = torch.tensor([k == "box" for k in kinds], device=dev)
    wrong = torch.tensor([k == "wrong-text+click" for k in kinds], device=dev)
    if bool(wrong.any()):
        text_i = _with_wrong_text(model, emb_i, input_ids[inter], attention_mask[inter], text_i, wrong)
    xy, ok = random_points_in(tgt & val, g)
    coords[:, 0] = xy.to(dev)
    labels[:, 0] = torch.where(click0 & ok.to(dev), torch.full_like(labels[:, 0], POS_LABEL), labels[:, 0])
    box = boxes_of(tgt & val, g).to(dev)
    coords[:, q] = torch.where(box0[:, None], box[:, :2], coords[:, q])
    coords[:, q + 1] = torch.where(box0[:, None], box[:, 2:], coords[:, q + 1])
    labels[:, q] = torch.where(box0, torch.full_like(labels[:, q], BOX_TL_LABEL), labels[:, q])
    labels[:, q + 1] = torch.where(box0, torch.full_like(labels[:, q + 1], BOX_BR_LABEL), labels[:, q + 1])
    prev = None
    passes = []
    for r in range(corrections):
        logits, _ = model.decode_interactive(emb_i, coords, labels, text_i, with_text, prev)
        passes.append(logits)
        with torch.no_grad():
            xy, positive, _ = next_clicks(logits[:, 0].detach() > 0, tgt_m, val_m)
            coords = coords.clone()
            labels = labels.clone()
            coords[:, 1 + r] = (xy + 0.5) * (s / m) - 0.5  # M-grid pixel -> frame pixel
            labels[:, 1 + r] = torch.where(positive, POS_LABEL, NEG_LABEL)
            prev = logits.detach().float()
    final, _ = model.decode_interactive(emb_i, coords, labels, text_i, with_text, prev)
    parts.append(final)
    out.mask_logits = torch.cat(parts)
    out.interactive_passes = tuple(passes)
    return out
