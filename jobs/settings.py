"""Runtime settings, read once from the environment (`Settings.from_env()`).

The web process and the workers read the same variables, so one `.env` (or compose `environment:` block)
configures the whole deployment. Secrets (API key, basic-auth password) never appear in `repr()` or logs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Mapping, Optional, Tuple

from labelstudio.media import MediaPolicy

_SECRET_FIELDS = ("label_studio_api_key", "basic_auth_pass")


def _env(env: Mapping[str, str], *names: str, default: str = "") -> str:
    """First non-empty variable among `names` (aliases used by label-studio-ml kept for convenience)."""
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return value.strip()
    return default


def _float(env, name: str, default: float) -> float:
    raw = _env(env, name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def _int(env, name: str, default: int) -> int:
    raw = _env(env, name)
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _bool(env, name: str, default: bool) -> bool:
    raw = _env(env, name).lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


def _choice(env, name: str, default: str, choices: Tuple[str, ...]) -> str:
    raw = _env(env, name, default=default).lower()
    if raw not in choices:
        raise ValueError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def _csv(value, default: str) -> str:
    """A JSON value given as a list ([4, 3, 2]) or a string ("4,3,2") -> "4,3,2"; empty -> `default`."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value or default)


def _raster_projects(env) -> Tuple[Tuple[str, str, str], ...]:
    """RASTER_PROJECTS='{"12": {"bands": "4,3,2", "stretch": "2,98"}}' -> (("12", "4,3,2", "2,98"),)."""
    raw = _env(env, "RASTER_PROJECTS")
    if not raw:
        return ()
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"RASTER_PROJECTS is not JSON ({exc}); e.g. "
                         '\'{"12": {"bands": "4,3,2", "stretch": "2,98"}}\'') from None
    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise ValueError('RASTER_PROJECTS must map project ids to {"bands": ..., "stretch": ...}')
    out = []
    for project, v in spec.items():
        unknown = set(v) - {"bands", "stretch"}
        if unknown:
            raise ValueError(f"RASTER_PROJECTS[{project!r}]: unknown keys {sorted(unknown)} (bands, stretch)")
        out.append((str(project).strip(), _csv(v.get("bands"), ""), _csv(v.get("stretch"), "auto")))
    return tuple(out)


def _check_raster(name: str, bands: str, stretch: str) -> None:
    """Validate band/stretch strings with the parsers that will apply them (imported only when set: the web
    process otherwise never loads the imaging code)."""
    from formats.stretch import parse_bands, parse_stretch

    try:
        parse_bands(bands or None)
        parse_stretch(stretch)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    model_dir: str = "./runs/models"  # fine-tuned checkpoints: MODEL_DIR/<project>/<version>; must be shared by workers
    base_model: str = "demo"  # REFSEG_MODEL: "demo", "preset:NAME" or a checkpoint directory
    device: str = "auto"  # workers only: "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    train_device: str = ""  # fine-tuning (the trainer worker): e.g. "cuda:1" for a second GPU; "" = DEVICE
    label_studio_url: str = ""  # e.g. http://label-studio:8080 (as reachable from the workers)
    label_studio_api_key: str = field(default="", repr=False)  # legacy token or Personal Access Token (JWT)
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    predict_budget_s: float = 50.0  # /predict (batch) answers within this; LS cuts it at 100 s (60-90 behind proxies)
    interactive_timeout_s: float = 20.0
    batch_chunk_size: int = 8  # tasks per batch job: small enough that interactive jobs never wait long
    train_every_n_annotations: int = 10  # 0 = train only on START_TRAINING
    local_files_document_root: str = ""
    media_allowed_hosts: Tuple[str, ...] = ()  # hosts (besides LS's) task images may be downloaded from; "*" = any public
    media_max_bytes: int = MediaPolicy.max_bytes
    # how (Geo)TIFF task images become RGB: 1-based bands ("4,3,2"; "" = 1,2,3) and stretch (auto|none|minmax|
    # "2,98" percentiles); per project in RASTER_PROJECTS. Other formats load as they are.
    raster_bands: str = ""
    raster_stretch: str = "auto"
    raster_projects: Tuple[Tuple[str, str, str], ...] = ()  # (project, bands, stretch)
    media_max_pixels: int = MediaPolicy.max_pixels  # larger task images are refused before decoding
    media_timeout_s: float = MediaPolicy.timeout_s
    verify_ssl: bool = True
    log_level: str = "INFO"
    model_cache_size: int = 2  # models (versions) a worker keeps loaded at once
    # later clicks on a small object answered on a crop around it (refseg_model.zoom_in): "auto" (on for a
    # checkpoint trained for it, `refseg train --zoom-frac`), "on", "off"
    click_zoom: str = "auto"
    # fine-tuning
    finetune_steps: int = 200
    finetune_batch_size: int = 4
    finetune_lr: float = 1e-4
    # fraction of each fine-tune batch trained with simulated clicks (refseg_model TrainConfig.interactive_frac):
    # a text-only fine-tune wears off the click skill (measured in the README: 200 shifted-style corrections,
    # NoC@85 clicks only 11.03 at 0 vs 9.32 at 0.5); 0 restores text-only fine-tuning
    finetune_interactive_frac: float = 0.5
    # chance that a corrected small object trains as a zoomed crop (TrainConfig.zoom_frac). 0: with these 200 steps
    # of batch 4, 0.5 cost clicks (README: NoC@85 clicks only 8.08 at 0 vs 9.82 at 0.5, from demo-v3); a fine-tune
    # of a zoom-trained checkpoint keeps its `zoom_in` mark either way
    finetune_zoom_frac: float = 0.0
    finetune_min_annotations: int = 2
    finetune_holdout: float = 0.2  # fraction of annotated tasks held out to compare new vs current
    finetune_promote_tolerance: float = 0.0  # promote if new gIoU >= current gIoU - tolerance
    finetune_timeout_s: int = 6 * 3600

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "Settings":
        env = os.environ if env is None else env
        hosts = tuple(h.strip().lower() for h in _env(env, "MEDIA_ALLOWED_HOSTS").split(",") if h.strip())
        raster_bands = _env(env, "RASTER_BANDS")
        raster_stretch = _env(env, "RASTER_STRETCH", default=cls.raster_stretch)
        raster_projects = _raster_projects(env)
        if raster_bands or raster_stretch != cls.raster_stretch:
            _check_raster("RASTER_BANDS / RASTER_STRETCH", raster_bands, raster_stretch)
        for project, bands, stretch in raster_projects:
            _check_raster(f"RASTER_PROJECTS[{project!r}]", bands, stretch)
        return cls(
            redis_url=_env(env, "REDIS_URL", default=cls.redis_url),
            model_dir=_env(env, "MODEL_DIR", default=cls.model_dir),
            base_model=_env(env, "REFSEG_MODEL", default=cls.base_model),
            device=_env(env, "DEVICE", default=cls.device),
            train_device=_env(env, "TRAIN_DEVICE"),
            label_studio_url=_env(env, "LABEL_STUDIO_URL", "LABEL_STUDIO_HOST").rstrip("/"),
            label_studio_api_key=_env(env, "LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"),
            basic_auth_user=_env(env, "BASIC_AUTH_USER"),
            basic_auth_pass=_env(env, "BASIC_AUTH_PASS"),
            predict_budget_s=_float(env, "PREDICT_BUDGET_S", cls.predict_budget_s),
            interactive_timeout_s=_float(env, "INTERACTIVE_TIMEOUT_S", cls.interactive_timeout_s),
            batch_chunk_size=max(1, _int(env, "BATCH_CHUNK_SIZE", cls.batch_chunk_size)),
            train_every_n_annotations=max(0, _int(env, "TRAIN_EVERY_N_ANNOTATIONS", cls.train_every_n_annotations)),
            local_files_document_root=_env(
                env, "LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
            ),
            media_allowed_hosts=hosts,
            media_max_bytes=_int(env, "MEDIA_MAX_BYTES", cls.media_max_bytes),
            media_max_pixels=max(1, _int(env, "MEDIA_MAX_PIXELS", cls.media_max_pixels)),
            raster_bands=raster_bands,
            raster_stretch=raster_stretch,
            raster_projects=raster_projects,
            media_timeout_s=_float(env, "MEDIA_TIMEOUT_S", cls.media_timeout_s),
            verify_ssl=_bool(env, "VERIFY_SSL", True),
            log_level=_env(env, "LOG_LEVEL", default=cls.log_level).upper(),
            model_cache_size=max(1, _int(env, "MODEL_CACHE_SIZE", cls.model_cache_size)),
            click_zoom=_choice(env, "CLICK_ZOOM", cls.click_zoom, ("auto", "on", "off")),
            finetune_steps=max(1, _int(env, "FINETUNE_STEPS", cls.finetune_steps)),
            finetune_batch_size=max(1, _int(env, "FINETUNE_BATCH_SIZE", cls.finetune_batch_size)),
            finetune_lr=_float(env, "FINETUNE_LR", cls.finetune_lr),
            finetune_interactive_frac=min(1.0, max(0.0, _float(env, "FINETUNE_INTERACTIVE_FRAC",
                                                               cls.finetune_interactive_frac))),
            finetune_zoom_frac=min(1.0, max(0.0, _float(env, "FINETUNE_ZOOM_FRAC", cls.finetune_zoom_frac))),
            finetune_min_annotations=max(2, _int(env, "FINETUNE_MIN_ANNOTATIONS", cls.finetune_min_annotations)),
            finetune_holdout=min(0.9, max(0.0, _float(env, "FINETUNE_HOLDOUT", cls.finetune_holdout))),
            finetune_promote_tolerance=_float(env, "FINETUNE_PROMOTE_TOLERANCE", cls.finetune_promote_tolerance),
            finetune_timeout_s=max(60, _int(env, "FINETUNE_TIMEOUT_S", cls.finetune_timeout_s)),
        )

    def media_policy(self) -> MediaPolicy:
        """The task-image rules of this deployment, for labelstudio.media.MediaFetcher."""
        return MediaPolicy(document_root=self.local_files_document_root, allowed_hosts=self.media_allowed_hosts,
                           max_bytes=self.media_max_bytes, max_pixels=self.media_max_pixels,
                           timeout_s=self.media_timeout_s, verify_ssl=self.verify_ssl, raster_bands=self.raster_bands,
                           raster_stretch=self.raster_stretch, raster_projects=self.raster_projects)

    def raster_for(self, project) -> Tuple[str, str]:
        """(bands, stretch) for (Geo)TIFF images of `project`: its RASTER_PROJECTS entry, else the defaults."""
        return self.media_policy().raster_for(project)

    @property
    def trainer_device(self) -> str:
        """Where fine-tunes run: TRAIN_DEVICE, else DEVICE."""
        return self.train_device or self.device

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user and self.basic_auth_pass)

    def public_dict(self) -> dict:
        """Settings for logs and status pages: secrets replaced by whether they are set."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("<set>" if value else "<unset>") if f.name in _SECRET_FIELDS else value
        return out
