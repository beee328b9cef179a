"""The Label Studio prediction format: a predicted mask as brush RLE (BrushLabels) or traced polygons
(PolygonLabels), and the entries /predict answers for tasks that failed or are delivered later.

    done     {"result": [region], "score": s, "model_version": v}
    failed   {"result": [], "score": 0.0, "model_version": v, "error": "<why>"}   (stored by LS as an empty
             prediction; delete it in LS to retry once the cause is fixed)
    pending  {"score": 0.0, "model_version": "<v>-pending", "pending": true}   -- no "result" key: LS skips
             items without "result" (stores nothing); the real prediction is posted to /api/predictions later
"""
from __future__ import annotations

from typing import List

import numpy as np

from .brush import brush_region
from .labelconfig import ProjectConfig
from .polygons import polygon_regions


def error_result(version: str, message: str) -> dict:
    return {"result": [], "score": 0.0, "model_version": version, "error": message}


def no_suggestion(version: str) -> dict:
    """An answer that suggests nothing (no region, no error): for an interactive request with no prompt."""
    return {"result": [], "score": 0.0, "model_version": version}


def pending_result(version: str) -> dict:
    return {"score": 0.0, "model_version": f"{version}-pending", "pending": True}


def task_id(task):
    """The task's id if it is a plain int/str (anything else is treated as no id: results still line up)."""
    tid = task.get("id") if isinstance(task, dict) else None
    return tid if isinstance(tid, (int, str)) and not isinstance(tid, bool) else None


def prediction(mask: np.ndarray, score: float, cfg: ProjectConfig, version: str) -> dict:
    """`{"result": [...], "score": s, "model_version": v}`; an empty mask gives no region."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        regions: List[dict] = []
    elif cfg.output == "polygon":
        regions = polygon_regions(mask, from_name=cfg.from_name, to_name=cfg.image_name, label=cfg.label)
    else:
        regions = [brush_region(mask, from_name=cfg.from_name, to_name=cfg.image_name, label=cfg.label)]
    score = float(score)
    for r in regions:
        r["score"] = score
    return {"result": regions, "score": score, "model_version": version}
