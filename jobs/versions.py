"""Per-project model version lineage, kept in Redis so that the web process and every worker agree.

    refseg:project:<id>:model     hash {version, checkpoint, parent, promoted_at, metrics}
    refseg:project:<id>:history   list of JSON entries, newest first
    refseg:projects               set of project ids that have a lineage

A project without a lineage uses the base model (REFSEG_MODEL); its version is the base checkpoint's version,
read from the checkpoint's JSON config (the web process never imports torch).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import redis

from . import keys

PROJECTS_KEY = keys.PROJECTS


@dataclass(frozen=True)
class ModelVersion:
    version: str
    checkpoint: str  # a spec RefSegPredictor.from_spec understands: "demo", "preset:NAME" or a directory


@functools.lru_cache(maxsize=8)
def base_model_version(spec: str) -> str:
    """The version string of a model spec, without loading the model (mirrors refseg_model.checkpoint.load_model)."""
    if spec.startswith("preset:"):
        return f"{spec[len('preset:'):]}-init"
    if spec == "demo":
        path = _demo_checkpoint_dir()
    else:
        path = Path(spec)
    try:
        return str(json.loads((path / "config.json").read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        # not a checkpoint directory (a bare preset name, or the demo checkpoint not built yet): the workers
        # report the load error; the spec itself keeps the version stable meanwhile
        return spec if spec == "demo" or "/" in spec else f"{spec}-init"


def _demo_checkpoint_dir() -> Path:
    """The demo checkpoint shipped inside the refseg_model package, found without importing it (the web
    process never imports the model package; only its config.json is read here)."""
    spec = importlib.util.find_spec("refseg_model")
    if spec is None or not spec.submodule_search_locations:
        return Path("refseg_model") / "assets" / "demo"
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "assets" / "demo"


def _model_key(project: str) -> str:
    return keys.project(project, "model")


def _history_key(project: str) -> str:
    return keys.project(project, "history")


class VersionStore:
    def __init__(self, state: redis.Redis, base_spec: str) -> None:
        self.state = state  # decode_responses=True connection
        self.base = ModelVersion(base_model_version(base_spec), base_spec)

    def current(self, project: str) -> ModelVersion:
        d = self.state.hgetall(_model_key(project))
        if not d.get("version") or not d.get("checkpoint"):
            return self.base
        return ModelVersion(d["version"], d["checkpoint"])

    def promote(self, project: str, version: str, checkpoint: str, *, parent: str, metrics: dict) -> None:
        entry = {"version": version, "checkpoint": checkpoint, "parent": parent,
                 "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "metrics": metrics}
        pipe = self.state.pipeline()
        pipe.hset(_model_key(project), mapping={k: v if isinstance(v, str) else json.dumps(v) for k, v in entry.items()})
        pipe.lpush(_history_key(project), json.dumps(entry))
        pipe.sadd(PROJECTS_KEY, project)
        pipe.execute()

    def history(self, project: str) -> List[dict]:
        return [json.loads(x) for x in self.state.lrange(_history_key(project), 0, -1)]

    def projects(self) -> List[str]:
        return sorted(self.state.smembers(PROJECTS_KEY), key=lambda p: (len(p), p))

    def reset(self, project: str) -> None:
        """Back to the base model (history kept): for operators, e.g. after deleting MODEL_DIR."""
        self.state.delete(_model_key(project))


def next_finetune_number(state: redis.Redis, project: str) -> int:
    """1, 2, 3, ... per project: numbers the versions a project's fine-tunes produce (never reused)."""
    return int(state.incr(keys.project(project, "ft_counter")))


def new_version_name(base: ModelVersion, project: str, n: int) -> str:
    """`<base>-p<project>-ft<n>`: unique within a lineage, readable in LS's model-version selector."""
    return f"{base.version}-p{project}-ft{n}"
