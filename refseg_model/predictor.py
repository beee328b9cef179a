"""Predictor with an image-embedding cache.

Encoding an image (SAM image encoder + CLIP/SigLIP vision tower) is the expensive part and happens once per
image; every further expression on a cached image costs text encoding + prompter + mask decoder only.

    predictor = RefSegPredictor.from_spec("demo")
    [pred] = predictor.predict(image, ["the white storage tank left of the road"])
    pred.mask   # H x W bool at the original image size
    pred.score  # confidence in [0, 1] (see `confidence`)
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .device import resolve_device  # noqa: F401  (re-exported: the predictor's callers resolve DEVICE with it)
from .modeling.refseg import ImageEmbedding, RefSegModel
from .transforms import image_to_frame, logits_to_original


@dataclass
class Prediction:
    mask: np.ndarray  # H x W bool
    score: float  # confidence in [0, 1]
    iou_pred: float  # the SAM IoU head's raw estimate (not trained by the paper's losses; informative only)


@dataclass
class CachedImage:
    embedding: ImageEmbedding  # batch of 1
    resized: Tuple[int, int]
    original: Tuple[int, int]


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """LRU cache of image embeddings, thread-safe; `capacity` images."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = max(0, int(capacity))
        self._items: "OrderedDict[str, CachedImage]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Optional[CachedImage]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, item: CachedImage) -> None:
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

    def __len__(self) -> int:
        return len(self._items)


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
                 version: str = "unknown") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.cache = EmbeddingCache(cache_size)
        self.version = version
        self.threshold = float(model.cfg.mask_threshold)
        self._lock = threading.Lock()  # one forward at a time per model

    @classmethod
    def from_spec(cls, spec: str = "demo", device: Union[str, torch.device] = "cpu", cache_size: int = 32):
        from .checkpoint import load_model

        model, meta = load_model(spec, device)
        return cls(model, device=device, cache_size=cache_size, version=str(meta.get("version", spec)))

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
        return [
            CachedImage(ImageEmbedding(emb.sam[i : i + 1], emb.clip[i : i + 1]), resized, original)
            for i, (resized, original) in enumerate(shapes)
        ]

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
        emb = ImageEmbedding(
            torch.cat([it.embedding.sam for it in items]), torch.cat([it.embedding.clip for it in items])
        ).to(self.device)
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

    def predict(
        self, image: np.ndarray, expressions: Union[str, Sequence[str]], key: Optional[str] = None
    ) -> List[Prediction]:
        """Masks for one image and one or more expressions (image encoded at most once, via the cache)."""
        if isinstance(expressions, str):
            expressions = [expressions]
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
