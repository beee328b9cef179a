"""The steps of the end-to-end flow, through Label Studio's REST API only (shared by the tests in tests/e2e)."""
from __future__ import annotations

import time

import numpy as np
import requests
from backend_support import check_brush_prediction
from backend_support import decode_brush as decode  # noqa: F401 (the e2e tests import it from here)
from e2e_support import ML_TIMEOUT_PREDICT

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Text name="expr" value="$expression"/>
  <TextArea name="prompt" toName="image" editable="true" rows="2" maxSubmissions="1" showSubmitButton="true"/>
  <BrushLabels name="mask" toName="image"><Label value="target" background="#ff0000"/></BrushLabels>
</View>"""


def create_project(ls, title: str, samples, storage_dir=None, config: str = CONFIG) -> dict:
    """A project with `samples` ({"url", "expression", ...}) as tasks, and a local-files storage on
    `storage_dir` when given. Returns {"id", "tasks": {task id: sample}}."""
    project = ls.post("/api/projects", json={"title": title, "label_config": config})
    pid = project["id"]
    if storage_dir is not None:
        ls.post("/api/storages/localfiles", json={"project": pid, "title": "images", "path": str(storage_dir),
                                                  "use_blob_urls": False})
    r = ls.post(f"/api/projects/{pid}/import",
                json=[{"data": {"image": s["url"], "expression": s["expression"]}} for s in samples])
    assert r["task_count"] == len(samples)
    tasks = all_tasks(ls, pid)
    assert len(tasks) == len(samples)
    by_url_expr = {(s["url"], s["expression"]): s for s in samples}
    return {"id": pid, "tasks": {t["id"]: by_url_expr[(t["data"]["image"], t["data"]["expression"])] for t in tasks}}


def all_tasks(ls, pid: int) -> list:
    out, page = [], 1
    while True:
        body = ls.get("/api/tasks", params={"project": pid, "page": page, "page_size": 100})
        out += body["tasks"]
        if len(out) >= body["total"] or not body["tasks"]:
            return out
        page += 1


def connect(ls, pid: int, backend_url: str) -> dict:
    ml = ls.post("/api/ml", json={"url": backend_url, "project": pid, "title": "refseg-assist", "is_interactive": True})
    assert ml["state"] == "CO", ml
    return ml


def created_stamp(ls, pid: int) -> int:
    """The project's creation time in whole unix seconds: what Label Studio sends as "<id>.<created>"."""
    from datetime import datetime, timezone

    created = datetime.fromisoformat(ls.get(f"/api/projects/{pid}")["created_at"].replace("Z", "+00:00"))
    return int((created if created.tzinfo else created.replace(tzinfo=timezone.utc)).timestamp())


def predictions(ls, pid: int) -> list:
    return ls.get("/api/predictions", params={"project": pid})


def by_task(preds) -> dict:
    out = {}
    for p in preds:
        out.setdefault(p["task"], []).append(p)
    return out


def retrieve(ls, pid: int) -> float:
    """The data manager's "Retrieve predictions" on every task; returns the seconds the HTTP call took."""
    t0 = time.monotonic()
    ls.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": True, "excluded": []}}, timeout=ML_TIMEOUT_PREDICT * 4 + 60)
    return time.monotonic() - t0


def delete_predictions(ls, pid: int) -> None:
    ls.post("/api/dm/actions", params={"id": "delete_tasks_predictions", "project": pid},
            json={"selectedItems": {"all": True, "excluded": []}})


def ml_version(ls, pid: int) -> str:
    """GET /api/ml?project= makes LS call the backend's /health + /setup and store the version it reports."""
    [ml] = ls.get("/api/ml", params={"project": pid})
    return ml["model_version"]


def check_prediction(pred: dict, sample: dict, expected, version: str) -> None:
    check_brush_prediction(pred, expected, sample["image"].shape[:2], version)


def expected(model, sample):
    [p] = model.predict_many(lambda i: sample["image"], [(0, sample["expression"])])
    return p


def metric(backend_url: str, name: str, label: str) -> float:
    text = requests.get(backend_url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def brush_annotation(mask: np.ndarray, **extra) -> dict:
    """An annotation body: the mask as one brush region (LS's RLE via labelstudio.brush)."""
    from labelstudio.brush import brush_region

    result = [brush_region(mask, from_name="mask", to_name="image", label="target")] if mask.any() else []
    return {"result": result, "was_cancelled": False, "ground_truth": False, "lead_time": 4.2, **extra}
