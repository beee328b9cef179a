"""What every job needs, built once per worker process: settings, Redis, versions, models, LS client, media."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from jobs.connections import rq_connection, state_connection
from jobs.settings import Settings
from jobs.versions import VersionStore
from labelstudio.client import LabelStudioClient
from labelstudio.media import MediaFetcher

from .model_cache import ModelCache


@dataclass
class Runtime:
    settings: Settings
    rq_conn: object
    state: object
    versions: VersionStore
    models: ModelCache
    ls: LabelStudioClient
    media: MediaFetcher


@functools.lru_cache(maxsize=1)
def runtime() -> Runtime:
    s = Settings.from_env()
    state = state_connection(s.redis_url)
    ls = LabelStudioClient(s.label_studio_url, s.label_studio_api_key, s.verify_ssl)
    return Runtime(settings=s, rq_conn=rq_connection(s.redis_url), state=state,
                   versions=VersionStore(state, s.base_model), models=ModelCache(s.device, s.model_cache_size),
                   ls=ls, media=MediaFetcher(s.media_policy(), ls))
