"""Predictor with an image-embedding cache.

Encoding an image (SAM image encoder + CLIP/SigLIP vision tower) is the expensive part and happens once per
image; every further expression on a cached image costs text encoding + prompter + mask decoder only. The cache
holds the whole `ImageEmbedding`: the SAM image embedding, the CLIP/SigLIP patch tokens and, for SAM 2, the
high-resolution decoder features.

    predictor = RefSegPredictor.from_spec("demo")
    [pred] = predictor.predict(image, ["the white storage tank left of the road"])
    pred.mask   # H x W bool at the original image size
    pred.score  # confidence in [0, 1] (see `confidence`)

Interactive (clicks / a box, with or without an expression), in ORIGINAL image pixels:

    [p1] = predictor.predict(image, "the pond", points=[(120, 80, True)])
    [p2] = predictor.predict(image, "the pond", points=[(120, 80, True), (300, 40, False)], mask_input=p1.low_res)
    [p3] = predictor.predict(image, None, box=(10, 10, 200, 150))            # no expression: SAM's click tool

The text tower + prompter output is cached per (image, expression) next to the image embedding, so a click on
a cached image costs SAM's prompt encoder + mask decoder only. `Prediction.low_res` (1 x 1 x M x M logits) is
what the next click passes back as `mask_input`.

`predict_sequence` takes requests that carry all clicks so far (as Label Studio sends them) and finds the
previous answer itself; with `zoom` (a `zoom_in.ZoomIn`), a later click on a small object is answered on a crop
around it (see `zoom_in`).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .device import resolve_device  # noqa: F401  (re-exported: the predictor's callers resolve DEVICE with it)
from .modeling.refseg import ImageEmbedding, RefSegModel, TextPrompts, geometry_tensors
from .transforms import image_to_frame, logits_to_frame, logits_to_original, point_to_frame, resize_at
from .zoom_in import ZoomIn

Point = Tuple[float, float, bool]  # (x, y, positive) in original image pixels
Box = Tuple[float, float, float, float]  # (x0, y0, x1, y1) in original image pixels
PROMPTS_PER_IMAGE = 16  # (image, expression) prompter outputs kept per cached image


@dataclass
class Prediction:
    mask: np.ndarray  # H x W bool
    score: float  # confidence in [0, 1]
    iou_pred: float  # the SAM IoU head's raw estimate (not trained by the paper's losses; informative only)
    low_res: Optional[torch.Tensor] = None  # 1 x 1 x M x M mask logits over the S x S frame (interactive path)


@dataclass
class CachedImage:
    embedding: ImageEmbedding  # batch of 1
    resized: Tuple[int, int]
    original: Tuple[int, int]
    # expression -> the prompter's output on this image (LRU, PROMPTS_PER_IMAGE), for clicks
    prompts: "OrderedDict[str, TextPrompts]" = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.prompts is None:
            self.prompts = OrderedDict()


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


class LRUCache:
    """Thread-safe least-recently-used map with hit/miss counts; `capacity` items (0 = keeps nothing)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._items: "OrderedDict[Hashable, object]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: Hashable, item) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def keys(self) -> list:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


class EmbeddingCache(LRUCache):
    """Image embeddings (`CachedImage`) by image key (`image_key`); `capacity` images."""

    def __init__(self, capacity: int = 32) -> None:
        super().__init__(capacity)


@dataclass
class Answer:
    """An interactive answer as the next click needs it: `low_res` (1 x 1 x M x M logits over the S x S frame,
    CPU), and for a zoomed answer the crop (x0, y0, side in image pixels) with its own low-res logits over the
    crop, which keep the detail that `low_res` is too coarse for on a large image."""

    low_res: torch.Tensor
    crop: Optional[Tuple[Tuple[int, int, int], torch.Tensor]] = None


class AnswerMemory(LRUCache):
    """`Answer`s of recent interactive requests, LRU, keyed by (image key, expression, clicks, box): lets a
    request that carries all clicks so far find the answer to its prefix (the same clicks minus the last) and
    pass it back as the dense prompt, as SAM / RITM do. M x M floats each, twice for a zoomed answer (64 KiB for
    the demo model, 256 KiB for SAM at 1024 px)."""

    def __init__(self, capacity: int = 128) -> None:
        super().__init__(capacity)

    @staticmethod
    def key(image: str, expression: Optional[str], points: Sequence[Point], box: Optional[Box]) -> tuple:
        return (image, expression or None, tuple((float(x), float(y), bool(p)) for x, y, p in points),
                None if box is None else tuple(float(v) for v in box))


def stability_score(logits: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability score: IoU of the masks thresholded at +offset and -offset (logits ... x H x W)."""
    inter = (logits > offset).flatten(-2).sum(-1).float()
    union = (logits > -offset).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def confidence(logits: torch.Tensor) -> float:
    """Confidence of one mask from its logits (H x W): stability x mean foreground probability.

    High when the mask is sharp (few pixels near the threshold) and its pixels are confidently on; an empty
    mask scores 0, so that "nothing found" sorts first for review in active learning.
    """
    prob = torch.sigmoid(logits)
    fg = prob > 0.5
    if not bool(fg.any()):
        return 0.0
    return float(stability_score(logits) * prob[fg].mean())


class RefSegPredictor:
    def __init__(self, model: RefSegModel, device: Union[str, torch.device] = "cpu", cache_size: int = 32,
                 version: str = "unknown", zoom: Optional[ZoomIn] = None) -> None:
        self.device = torch.device(device)
        self.zoom = zoom  # later clicks on small objects answered on a crop (predict_sequence); None: never
        self.model = model.to(self.device).eval()
        self.cache = EmbeddingCache(cache_size)
        self.version = version
        self.threshold = float(model.cfg.mask_threshold)
        self._lock = threading.Lock()  # one forward at a time per model
        self.prompt_hits = 0  # (image, expression) prompter outputs reused / computed by the interactive path
        self.answers = AnswerMemory(128)  # recent interactive answers, for predict_sequence
        self.prompt_misses = 0

    @classmethod
    def from_spec(cls, spec: str = "demo", device: Union[str, torch.device] = "cpu", cache_size: int = 32,
                  zoom: str = "auto"):
        """zoom: "on", "off", or "auto": on for a checkpoint trained for it (`refseg train --zoom-frac`, recorded
        as `zoom_in` in its metadata and passed on to its fine-tunes)."""
        from .checkpoint import load_model

        if zoom not in ("auto", "on", "off"):
            raise ValueError(f"zoom must be auto, on or off, not {zoom!r}")
        model, meta = load_model(spec, device)
        trained = bool((meta.get("metadata") or {}).get("zoom_in"))
        use = zoom == "on" or (zoom == "auto" and trained)
        return cls(model, device=device, cache_size=cache_size, version=str(meta.get("version", spec)),
                   zoom=ZoomIn() if use else None)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    # ------------------------------------------------------------------------------------------- images
    @torch.inference_mode()
    def _embed_batch(self, images: Sequence[np.ndarray]) -> List[CachedImage]:
        frames, shapes = [], []
        for img in images:
            frame, resized = image_to_frame(img, self.image_size)
            frames.append(frame)
            shapes.append((resized, tuple(img.shape[:2])))
        emb = self.model.encode_image(torch.stack(frames).to(self.device))
        return [CachedImage(emb.row(i), resized, original) for i, (resized, original) in enumerate(shapes)]

    def embed(self, image: np.ndarray, key: Optional[str] = None) -> Tuple[str, CachedImage]:
        """Encode `image` (H x W x 3 uint8) unless its embedding is cached; returns (key, cached entry)."""
        key = key or image_key(image)
        item = self.cache.get(key)
        if item is None:
            with self._lock:
                item = self._embed_batch([image])[0]
            self.cache.put(key, item)
        return key, item

    # ------------------------------------------------------------------------------------------ decoding
    @torch.inference_mode()
    def _decode(self, items: Sequence[CachedImage], expressions: Sequence[str]) -> List[Prediction]:
        emb = ImageEmbedding.cat([it.embedding for it in items]).to(self.device)
        tok = self.model.encoder.tokenize(list(expressions), self.device)
        out = self.model.decode(emb, tok["input_ids"], tok["attention_mask"])
        preds = []
        for i, it in enumerate(items):
            logits = logits_to_original(out.mask_logits[i : i + 1].float(), self.image_size, it.resized, it.original)[0]
            preds.append(
                Prediction(
                    mask=(logits > self.threshold).cpu().numpy(),
                    score=confidence(logits),
                    iou_pred=float(out.iou_pred[i, 0]),
                )
            )
        return preds

    def _text_prompts(self, item: CachedImage, expression: str) -> TextPrompts:
        """The prompter's output for (this image, expression), computed once and kept next to the embedding."""
        cached = item.prompts.get(expression)
        if cached is not None:
            item.prompts.move_to_end(expression)
            self.prompt_hits += 1
            return cached
        self.prompt_misses += 1
        tok = self.model.encoder.tokenize([expression], self.device)
        prompts, _ = self.model.encode_text_prompts(item.embedding.to(self.device), tok["input_ids"],
                                                    tok["attention_mask"])
        item.prompts[expression] = prompts
        while len(item.prompts) > PROMPTS_PER_IMAGE:
            item.prompts.popitem(last=False)
        return prompts

    @torch.inference_mode()
    def _decode_interactive(self, item: CachedImage, expression: Optional[str], points: Sequence[Point],
                            box: Optional[Box], mask_input) -> Prediction:
        text = self._text_prompts(item, expression) if expression else None
        if text is None and not points and box is None:
            raise ValueError("nothing to segment: give an expression, a point or a box")
        pts = [(*point_to_frame(x, y, item.resized, item.original), bool(pos)) for x, y, pos in points]
        fbox = None
        if box is not None:
            fbox = (*point_to_frame(box[0], box[1], item.resized, item.original),
                    *point_to_frame(box[2], box[3], item.resized, item.original))
        coords, labels = geometry_tensors(pts, fbox, device=self.device)
        prev = None
        if mask_input is not None:
            m = self.model.sam.mask_input_size
            prev = torch.as_tensor(mask_input, dtype=torch.float32).reshape(1, 1, m, m).to(self.device)
        masks, iou = self.model.decode_interactive(item.embedding.to(self.device), coords, labels, text,
                                                   mask_input=prev)
        logits = logits_to_original(masks.float(), self.image_size, item.resized, item.original)[0]
        return Prediction(mask=(logits > self.threshold).cpu().numpy(), score=confidence(logits),
                          iou_pred=float(iou[0, 0]), low_res=masks.float().cpu())

    def predict_prompts(
        self,
        image: np.ndarray,
        expression: Optional[str],
        points: Optional[Sequence[Point]] = None,
        box: Optional[Box] = None,
        mask_input: Optional[torch.Tensor] = None,
        key: Optional[str] = None,
    ) -> Prediction:
        """One answer for an expression (or None) with clicks / a box / the previous answer's `low_res`, all
        optional but not all absent; `low_res` is set on the result. Text only here equals `predict`'s answer."""
        _, item = self.embed(image, key)
        with self._lock:
            return self._decode_interactive(item, expression or None, list(points or []), box, mask_input)

    def predict_sequence(
        self,
        image: np.ndarray,
        expression: Optional[str],
        points: Sequence[Point],
        box: Optional[Box],
        memory: Optional[AnswerMemory] = None,
        key: Optional[str] = None,
    ) -> Prediction:
        """An interactive request that carries ALL its clicks so far (as Label Studio sends them): the answer to
        the same request without its last click (or, for the first click or a box, the expression alone) is
        looked up in `memory` and passed as `mask_input`; the answer is remembered for the next click. A missing
        prefix (another worker answered it, or it was evicted) only means no previous mask; the text-only
        prefix is cheap (decoder only, text cached) and computed when missing. `memory` defaults to the
        predictor's own (`answers`), so a new model version never sees an older version's answers.

        With `self.zoom`, from the second click on (no box), while the previous answer is small: the answer comes
        from a crop around it (`_zoomed`)."""
        memory = self.answers if memory is None else memory
        key, item = self.embed(image, key)
        points = list(points or [])
        if points:
            prefix = (points[:-1], box)
        elif box is not None:
            prefix = ([], None)
        else:
            prefix = None
        prev: Optional[Answer] = None
        if prefix is not None:
            prev = memory.get(memory.key(key, expression, *prefix))
            if prev is None and not prefix[0] and prefix[1] is None and expression:
                prev = Answer(self.predict_prompts(image, expression, key=key).low_res)
                memory.put(memory.key(key, expression, [], None), prev)
        crop = None
        if self.zoom is not None and prev is not None and len(points) >= 2 and box is None:
            # the previous answer at the image's size only where it may be small enough to zoom into
            if prev.crop is not None or not self._surely_large(item, prev.low_res):
                prev_logits = self._answer_logits(item, prev)
                crop = self.zoom.crop((prev_logits > self.threshold).numpy(), points)
        if crop is None:
            pred = self.predict_prompts(image, expression, points, box, None if prev is None else prev.low_res, key)
            answer = Answer(pred.low_res)
        else:
            pred, answer = self._zoomed(image, key, item, prev, prev_logits, crop, points)
        memory.put(memory.key(key, expression, points, box), answer)
        return pred

    def _surely_large(self, item: CachedImage, low_res: torch.Tensor) -> bool:
        """True when the mask of the full-image answer `low_res` (1 x 1 x M x M) at the image's size is certainly
        too large to zoom into: two of its pixels, evaluated exactly at the image's size, lie farther apart than
        `zoom.max_object`. Found from the frame-size logits (h' x w') and four pixels, without the H x W logits
        (150 ms per click at 5000 x 5000 on one CPU thread); False only means "not known"."""
        frame = logits_to_original(low_res.float(), self.image_size, item.resized, item.resized)[0]
        strong = torch.nonzero(frame > self.threshold + 1.0)  # (N, 2) y, x: well inside the mask
        if len(strong) == 0:
            return False
        ends = strong[torch.stack([strong[:, 0].argmin(), strong[:, 0].argmax(),
                                   strong[:, 1].argmin(), strong[:, 1].argmax()])].numpy()
        (h, w), (H, W) = item.resized, item.original
        ys = np.clip(np.round((ends[:, 0] + 0.5) * H / h - 0.5), 0, H - 1).astype(np.int64)
        xs = np.clip(np.round((ends[:, 1] + 0.5) * W / w - 0.5), 0, W - 1).astype(np.int64)
        on = (resize_at(frame, (H, W), ys, xs) > self.threshold + 1e-2).numpy()  # 1e-2: far above float rounding
        if on.sum() < 2:
            return False
        ys, xs = ys[on], xs[on]
        return self.zoom.too_large(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1), item.original)

    def _answer_logits(self, item: CachedImage, answer: Answer) -> torch.Tensor:
        """An answer's logits at the image's size (H x W, CPU), the crop's own where it was zoomed."""
        # a copy: without resizing, logits_to_original returns a view of the remembered low_res
        logits = logits_to_original(answer.low_res, self.image_size, item.resized, item.original)[0].clone()
        if answer.crop is not None:
            self._paste(logits, *answer.crop)
        return logits

    def _paste(self, logits: torch.Tensor, crop: Tuple[int, int, int], low_res: torch.Tensor) -> None:
        """Write a square crop's answer (1 x 1 x M x M over its frame) into `logits` (H x W) at `crop`."""
        x0, y0, side = crop
        logits[y0:y0 + side, x0:x0 + side] = logits_to_original(low_res, self.image_size, (self.image_size,) * 2,
                                                                (side, side))[0]

    def _zoomed(self, image: np.ndarray, key: str, item: CachedImage, prev: Answer, prev_logits: torch.Tensor,
                crop: Tuple[int, int, int], points: Sequence[Point]) -> Tuple[Prediction, Answer]:
        """Answer on the square crop (x0, y0, side) of `image`: its clicks (shifted into it; the crop holds the
        previous mask and every positive click) and the previous logits cropped as mask input, no expression.
        The crop's logits replace the previous answer's inside it. The crop's embedding is cached under the
        image's key and the crop, so further clicks in the same crop run the decoder only."""
        x0, y0, side = crop
        inside = [(x - x0, y - y0, pos) for x, y, pos in points if x0 <= x < x0 + side and y0 <= y < y0 + side]
        _, citem = self.embed(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]), f"{key}@{x0},{y0},{side}")
        m = self.model.sam.mask_input_size
        mask_input = torch.nn.functional.interpolate(prev_logits[y0:y0 + side, x0:x0 + side][None, None],
                                                     size=(m, m), mode="bilinear", align_corners=False)
        with self._lock:
            p = self._decode_interactive(citem, None, inside, None, mask_input)
        logits = prev_logits.clone()
        self._paste(logits, crop, p.low_res)
        low_res = logits_to_frame(logits, self.image_size, item.resized, m, prev.low_res)
        pred = Prediction(mask=(logits > self.threshold).numpy(), score=confidence(logits), iou_pred=p.iou_pred,
                          low_res=low_res)
        return pred, Answer(low_res, ((x0, y0, side), p.low_res))

    def predict(
        self,
        image: np.ndarray,
        expressions: Union[None, str, Sequence[str]],
        key: Optional[str] = None,
        points: Optional[Sequence[Point]] = None,
        box: Optional[Box] = None,
        mask_input: Optional[torch.Tensor] = None,
    ) -> List[Prediction]:
        """Masks for one image and one or more expressions (image encoded at most once, via the cache).

        Interactive: with `points` [(x, y, positive)], a `box` (x0, y0, x1, y1) — both in original image pixels
        — or `mask_input` (the previous answer's `low_res`, 1 x 1 x M x M), or with no expression (None), the
        one expression (or none) is decoded with them and a single Prediction comes back, with `low_res` set.
        Its text side is cached per (image, expression): a second click re-runs the prompt encoder and the mask
        decoder only.
        """
        interactive = bool(points) or box is not None or mask_input is not None or expressions is None
        if isinstance(expressions, str):
            expressions = [expressions]
        if interactive:
            expressions = list(expressions or [])
            if len(expressions) > 1:
                raise ValueError("clicks and boxes go with one expression at a time")
            return [self.predict_prompts(image, expressions[0] if expressions else None, points, box, mask_input,
                                         key)]
        _, item = self.embed(image, key)
        with self._lock:
            return self._decode([item] * len(expressions), expressions)

    def predict_many(
        self,
        load_image,
        queries: Sequence[Tuple[str, str]],
        batch_size: int = 16,
        progress: bool = False,
    ) -> List[Prediction]:
        """Batch prediction over (image key, expression) pairs; `load_image(key)` returns the H x W x 3 array.

        Images are encoded once each, `batch_size` at a time, and only their chunk's embeddings are held
        (the LRU cache is not flooded); the chunk's expressions are decoded in batches. Results come back in
        the order of `queries`.
        """
        from tqdm import tqdm

        by_key: Dict[str, List[int]] = {}
        for idx, (k, _) in enumerate(queries):
            by_key.setdefault(k, []).append(idx)
        keys = list(by_key)
        out: List[Optional[Prediction]] = [None] * len(queries)
        bar = tqdm(total=len(queries), desc="predict", unit="expr", disable=not progress)
        with self._lock:
            for i in range(0, len(keys), batch_size):
                chunk = keys[i : i + batch_size]
                embedded = dict(zip(chunk, self._embed_batch([load_image(k) for k in chunk])))
                todo = [j for k in chunk for j in by_key[k]]
                for s in range(0, len(todo), batch_size):
                    part = todo[s : s + batch_size]
                    preds = self._decode([embedded[queries[j][0]] for j in part], [queries[j][1] for j in part])
                    for j, p in zip(part, preds):
                        out[j] = p
                    bar.update(len(part))
        bar.close()
        return out  # type: ignore[return-value]
