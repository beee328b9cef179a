"""Helpers shared by the model tests (imported as a plain module: pytest puts tests/ on sys.path)."""
from __future__ import annotations

from pathlib import Path

import torch

from formats.datasets.layouts import load_samples
from formats.datasets.sample_mask import load_sample_mask
from formats.images import load_image
from refseg_model.modeling.loss import refseg_loss
from refseg_model.train import collate


def segmentation_loss(model, data: Path) -> float:
    """5 BCE + 5 Dice (the paper's mask terms) of `model` on the whole train split, eval mode, no augmentation."""
    samples = load_samples(str(data), "train")
    items = [(load_image(s.image), load_sample_mask(s), s.expression) for s in samples]
    images, target, valid, exprs = collate(items, model.image_size, torch.device("cpu"))
    tok = model.encoder.tokenize(exprs)
    model.eval()
    with torch.no_grad():
        parts = refseg_loss(model, model(images, tok["input_ids"], tok["attention_mask"]), target, valid,
                            model.cfg.loss)
    return float(5 * parts["bce"] + 5 * parts["dice"])
