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


def small_zoom_case(predictor, n: int = 40):
    """(image, expression, points, first) of the first held-out `default` sample whose answer after one
    simulated click (`first`, a Prediction) is a small non-empty mask, with the annotator's two clicks: the
    second is answered on a crop (`zoom_in.ZoomIn`). `predictor`: the demo with zoom off. None if none of the
    first `n` samples qualifies."""
    from refseg_model.data.sources import synth_val_samples
    from refseg_model.interactive import next_clicks
    from refseg_model.predictor import AnswerMemory
    from refseg_model.zoom_in import ZoomIn

    def click(pred, target):
        xy, positive, _ = next_clicks(torch.from_numpy(pred)[None], target)
        return float(xy[0, 0]), float(xy[0, 1]), bool(positive[0])

    for image, gt, expr in synth_val_samples("default", predictor.image_size, n, seed=20_261_202):
        target = torch.from_numpy(gt)[None]
        points = [click(predictor.predict_prompts(image, expr).mask, target)]
        first = predictor.predict_sequence(image, expr, points, None, AnswerMemory())
        points.append(click(first.mask, target))
        if first.mask.any() and ZoomIn().crop(first.mask, points) is not None:
            return image, expr, points, first
    return None
