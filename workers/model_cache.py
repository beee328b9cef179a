"""Models kept warm in a worker process, keyed by checkpoint spec.

A job asks for the project's *current* checkpoint (read from Redis at job start), so a promoted version is
picked up by the next job without a restart ("hot reload"); the least recently used model is dropped when more
than `capacity` are loaded.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

log = logging.getLogger(__name__)


class ModelCache:
    def __init__(self, device: str = "auto", capacity: int = 2, embedding_cache: int = 32,
                 click_zoom: str = "auto") -> None:
        self.device = device
        self.click_zoom = click_zoom
        self.capacity = max(1, capacity)
        self.embedding_cache = embedding_cache
        self._models: "OrderedDict[str, object]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: str):
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                return self._models[spec]
            from refseg_model.predictor import RefSegPredictor, resolve_device

            t0 = time.monotonic()
            self.device = resolve_device(self.device)
            predictor = RefSegPredictor.from_spec(spec, device=self.device, cache_size=self.embedding_cache,
                                                  zoom=self.click_zoom)
            log.info("loaded model %s (version %s) on %s in %.1f s, click zoom-in %s", spec, predictor.version,
                     self.device, time.monotonic() - t0, "on" if predictor.zoom else "off")
            self._models[spec] = predictor
            while len(self._models) > self.capacity:
                old, _ = self._models.popitem(last=False)
                log.info("unloaded model %s", old)
            return predictor

    def loaded(self) -> list:
        return list(self._models)
