"""Helpers shared by the backend tests (plain functions; fixtures live in conftest.py)."""
from __future__ import annotations

import contextlib
import io
import socket
import time

import numpy as np
from PIL import Image

CONFIG_TEXT = """<View>
  <Image name="image" value="$image"/>
  <Text name="expr" value="$expression"/>
  <BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>
</View>"""
CONFIG_TEXTAREA = """<View>
  <Image name="image" value="$image"/>
  <TextArea name="prompt" toName="image" editable="true" maxSubmissions="1" showSubmitButton="true"/>
  <BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>
</View>"""
CONFIG_POLYGON = """<View>
  <Image name="image" value="$image"/>
  <Text name="expr" value="$expression"/>
  <PolygonLabels name="poly" toName="image"><Label value="target"/></PolygonLabels>
</View>"""


STAMP = 1712345678  # the creation time (unix s) the test projects have in the fake Label Studio


def iso(stamp: int) -> str:
    """A creation stamp as Label Studio's `created_at` (ISO 8601, UTC, microseconds)."""
    import datetime

    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def uid(project: int, stamp: int = STAMP) -> str:
    """The project as Label Studio sends it to /setup and /predict: "<id>.<created unix time>"."""
    return f"{project}.{stamp}"


def project_obj(project: int, stamp: int = STAMP) -> dict:
    """The project object of a webhook payload (the part the backend reads)."""
    return {"id": project, "title": f"p{project}", "created_at": iso(stamp)}


def project_key(project: int, ls_url: str, stamp: int = STAMP) -> str:
    """The key the backend keeps the project's state under (Redis, MODEL_DIR) when its LABEL_STUDIO_URL is
    `ls_url`."""
    from labelstudio.identity import ProjectRef, instance_id

    return ProjectRef(str(project), str(stamp), instance_id(ls_url)).key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(seed: int, h: int = 48, w: int = 64):
    """A random image with a bright rectangle (its mask is the 'ground truth')."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    y0, x0 = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
    mask[y0:y0 + h // 3, x0:x0 + w // 3] = True
    img[mask] = (240, 240, 240)
    return img, mask


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")




def wait_for_health(url: str, proc, log_path, what: str, timeout: float = 60, interval: float = 0.2,
                    request_timeout: float = 1) -> None:
    """Wait until `url`/health answers 200; fail at once, with the log's tail, if `proc` exits first."""
    from pathlib import Path

    import requests

    def up():
        if proc.poll() is not None:
            log_tail = Path(log_path).read_text(errors="replace")[-4000:]
            raise AssertionError(f"{what} exited ({proc.returncode}):\n{log_tail}")
        try:
            return requests.get(url + "/health", timeout=request_timeout).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, timeout, what, interval)


def queues_idle(rq_conn) -> bool:
    """No prediction job waiting or running (interactive and batch queues): whatever they deliver has arrived."""
    from rq import Queue
    from rq.registry import StartedJobRegistry

    return all(Queue(q, connection=rq_conn).count == 0 and StartedJobRegistry(q, connection=rq_conn).count == 0
               for q in ("interactive", "batch"))


def save_sharpened_tiny(path, version: str) -> str:
    """The `tiny` preset with fixed weights, saved as a checkpoint (what the workers load). Random weights give
    near-constant masks: the last decoder layer is sharpened so that masks and scores vary with the input."""
    import torch

    from refseg_model.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    model, _ = load_model("preset:tiny")
    last = model.sam.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    with torch.no_grad():
        last.weight.mul_(20)
        last.bias.mul_(20)
    return str(save_checkpoint(model, path, version))


def start_redis(directory, port: int = 0, appendonly: bool = False):
    """A redis-server on 127.0.0.1 (free port unless given), data in `directory`; returns (process, url).
    Raises FileNotFoundError when redis-server is not installed."""
    import shutil
    import subprocess

    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("redis-server not installed (run scripts/bootstrap.sh)")
    port = port or free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)]
    args += ["--appendonly", "yes", "--appendfsync", "everysec"] if appendonly else ["--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    conn = redis.Redis.from_url(url)

    def up():
        try:
            return conn.ping()
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_for(up, 15, "redis-server")
    except AssertionError:
        proc.kill()
        raise
    return proc, url


def stop_processes(procs, timeout: float = 20) -> None:
    """SIGTERM every (process, log file or None) pair, then wait (SIGKILL after `timeout`) and close the logs."""
    import subprocess

    for p, _ in procs:
        if p.poll() is None:
            p.terminate()
    for p, fh in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if fh is not None:
            fh.close()


@contextlib.contextmanager
def running_redis(directory):
    """A redis-server (see start_redis) for a test session: yields its URL, skips the tests when redis-server is
    not installed, stops it at the end."""
    import pytest

    directory.mkdir()
    try:
        proc, url = start_redis(directory)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield url
    finally:
        stop_processes([(proc, None)])


def add_annotated_project(fake_ls, project: int, first_id: int, n: int, stamp: int = STAMP, masks=None,
                          config: str = CONFIG_TEXT) -> str:
    """`n` labeled tasks in the fake Label Studio: synthetic images with one submitted brush annotation each
    (the scene's bright block, or `masks(task id, image, block mask)` when given), in a project with label
    config `config` (its brush control named "mask"). Returns the project as Label Studio sends it
    ("<id>.<created>")."""
    from labelstudio.brush import brush_region

    fake_ls.add_project(project, config, iso(stamp))
    for k in range(n):
        tid = first_id + k
        img, mask = scene(tid)
        if masks is not None:
            mask = masks(tid, img, mask)
        path = f"/data/upload/{project}/t{tid}.png"
        fake_ls.files[path] = png(img)
        region = brush_region(mask, from_name="mask", to_name="image", label="target")
        fake_ls.tasks[tid] = {
            "id": tid, "project": project, "is_labeled": True, "total_annotations": 1,
            "data": {"image": path, "expression": "the bright block"},
            "annotations": [{"id": tid * 10, "task": tid, "project": project, "was_cancelled": False,
                             "ground_truth": False, "updated_at": "2026-01-01T00:00:00Z", "result": [region]}],
        }
    return uid(project, stamp)


# ------------------------------------------------------------------------------------- brush predictions
def decode_brush(region: dict) -> np.ndarray:
    """A brush region's mask (original_height x original_width bool), decoded by label-studio-sdk's own RLE
    decoder, as Label Studio's editor reads it."""
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    flat = decode_rle(region["value"]["rle"])
    assert flat.size == h * w * 4, f"RLE decodes to {flat.size} values, expected {h}x{w}x4"
    return flat.reshape(h, w, 4)[:, :, 3] > 0


def check_brush_prediction(pred: dict, expected, size, version: str, score_tol: float = 1e-4) -> None:
    """`pred` (a /predict result, or a prediction stored in Label Studio) is the in-process `expected` answer
    (a Prediction: .mask, .score) in the README's config: one `mask`/`target` brush region at the image's
    original size (h, w) holding exactly that mask, or no region for an empty mask; version and score match."""
    assert pred["model_version"] == version
    assert abs(pred["score"] - expected.score) < score_tol
    if not expected.mask.any():
        assert pred["result"] == []
        return
    [region] = pred["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "mask" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["target"]
    assert (region["original_height"], region["original_width"]) == tuple(size)
    np.testing.assert_array_equal(decode_brush(region), expected.mask)

