"""What every job needs, built once per worker process: settings, Redis, versions, models, LS client, media."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from jobs.connections import rq_connection, state_connection
from jobs.projects import register_instance
from jobs.settings import Settings
from jobs.versions import VersionStore
from labelstudio.client import LabelStudioClient
from labelstudio.media import MediaFetcher

from .model_cache import ModelCache

_role = {"trainer": False}


@dataclass
class Runtime:
    settings: Settings
    rq_conn: object
    state: object
    versions: VersionStore
    models: ModelCache
    ls: LabelStudioClient
    media: MediaFetcher
    instance: str  # the Label Studio this worker serves (labelstudio.identity.instance_id of LABEL_STUDIO_URL)


def set_trainer(trainer: bool) -> None:
    """A worker that only takes the train queue keeps its models on TRAIN_DEVICE (else DEVICE); call before the
    first job."""
    _role["trainer"] = trainer
    runtime.cache_clear()


@functools.lru_cache(maxsize=1)
def runtime() -> Runtime:
    s = Settings.from_env()
    state = state_connection(s.redis_url)
    ls = LabelStudioClient(s.label_studio_url, s.label_studio_api_key, s.verify_ssl)
    device = s.trainer_device if _role["trainer"] else s.device
    return Runtime(settings=s, rq_conn=rq_connection(s.redis_url), state=state,
                   versions=VersionStore(state, s.base_model),
                   models=ModelCache(device, s.model_cache_size, click_zoom=s.click_zoom),
                   ls=ls, media=MediaFetcher(s.media_policy(), ls),
                   instance=register_instance(state, s.label_studio_url))
