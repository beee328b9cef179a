"""From a GeoTIFF scene to a real Label Studio 1.23.2 project and back (issue 13, item 4), through LS's API only.

A synthetic 4-band uint16 GeoTIFF (UTM) with a nodata corner -> `refseg tasks` (chips + import file, local-files
URLs) -> imported into a project served through a local-files storage -> "Retrieve predictions" from the backend
(one brush prediction per chip task) -> ground-truth chip masks submitted as annotations (brush RLE), two chips
never opened and one skipped -> `refseg export --data ls:PROJECT --to scene OUT` -> one GeoTIFF with the scene's
georeference whose mask equals the submitted chip masks wherever an annotated chip covers the scene, the
unannotated chips reported (never taken as background).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from e2e_flow import brush_annotation, by_task, connect, decode, expected, ml_version, predictions, retrieve
from e2e_support import wait_settled
from PIL import Image

pytestmark = pytest.mark.e2e

H, W, CHIP, OVERLAP = 300, 410, 96, 32  # 5 x 6 chip windows (the last row/column flush with the edge)
EXPRESSION = "the pond"
# the project's label config as the README gives it for scene chips
SCENE_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <Text name="expression" value="$expression"/>
  <TextArea name="prompt" toName="image" editable="true" perRegion="false" placeholder="referring expression"/>
  <BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>
</View>"""


def _ground_truth(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gt = np.zeros((H, W), bool)
    yy, xx = np.mgrid[:H, :W]
    for _ in range(9):  # discs and boxes, many across chip borders
        r, c = rng.integers(0, H), rng.integers(0, W)
        if rng.random() < 0.5:
            gt |= (yy - r) ** 2 + (xx - c) ** 2 < rng.integers(8, 40) ** 2
        else:
            gt[r: r + rng.integers(5, 70), c: c + rng.integers(5, 90)] = True
    return gt


@pytest.fixture(scope="module")
def scene(e2e_root):
    from formats.georef import GeoReference
    from formats.geotiff_writer import write_geotiff

    rng = np.random.default_rng(11)
    data = rng.integers(200, 3000, (H, W, 4)).astype(np.uint16)
    data[:110, 300:] = 0  # nodata (all bands 0): the top right chip is nodata-only and gets no task
    path = e2e_root / "scene-src" / "scene_e2e.tif"
    path.parent.mkdir()
    georef = GeoReference((0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), "EPSG:32633")
    write_geotiff(path, data, georef, nodata=0, tile=64)
    return path


def test_scene_chips_through_label_studio_stitch_back_onto_the_scene(label_studio, backend_url, redis_url, docroot,
                                                                   scene, local_model, tmp_path, capsys):
    from cli.main import main as refseg
    from formats.raster_reader import RasterReader

    ls = label_studio
    # 1. chips + import file, with local-files URLs under docroot/scenes
    out = docroot / "scenes"
    assert refseg(["tasks", str(scene), "--chip", str(CHIP), "--overlap", str(OVERLAP), "--expression", EXPRESSION,
                   "--out", str(out), "--local-files-root", str(docroot), "--bands", "4,3,2"]) == 0
    made = json.loads(capsys.readouterr().out)
    tasks_file = json.loads((out / "tasks.json").read_text())
    assert made["tasks"] == len(tasks_file) == 29  # 30 windows, one of them nodata only

    # 2. into a project served through a local-files storage on docroot/scenes
    project = ls.post("/api/projects", json={"title": "refseg-e2e-scene", "label_config": SCENE_CONFIG})
    pid = project["id"]
    ls.post("/api/storages/localfiles", json={"project": pid, "title": "chips", "path": str(out),
                                              "use_blob_urls": False})
    assert ls.post(f"/api/projects/{pid}/import", json=tasks_file)["task_count"] == len(tasks_file)
    tasks = ls.get("/api/tasks", params={"project": pid, "page_size": 100})["tasks"]
    assert len(tasks) == len(tasks_file)
    for t in tasks:  # LS keeps the chip's georeference in the task data
        assert t["data"]["chip"]["scene"] == "scene_e2e" and t["data"]["chip"]["crs"] == "EPSG:32633"

    # 3. "Retrieve predictions": one brush prediction per chip task, the model's mask for that chip
    connect(ls, pid, backend_url)
    base = ml_version(ls, pid)
    retrieve(ls, pid)
    preds = by_task(wait_settled(redis_url, lambda: (lambda p: p if len(p) >= len(tasks) else None)(
        predictions(ls, pid)), 180, "one prediction per chip task, prediction queues idle"))
    assert sorted(preds) == sorted(t["id"] for t in tasks)
    assert all(len(v) == 1 and v[0]["model_version"] == base for v in preds.values())
    for t in tasks[::7]:
        chip_png = docroot / t["data"]["image"].split("?d=")[1]
        sample = {"image": np.asarray(Image.open(chip_png).convert("RGB")), "expression": EXPRESSION}
        want = expected(local_model, sample)
        [pred] = preds[t["id"]]
        if want.mask.any():
            [region] = pred["result"]
            assert (region["original_height"], region["original_width"]) == (CHIP, CHIP)
            np.testing.assert_array_equal(decode(region), want.mask)
        else:
            assert pred["result"] == []

    # 4. annotations: the ground truth of each chip (empty chips submitted with no region = background); two chips
    #    never opened, one skipped by the annotator
    gt = _ground_truth(4)
    covered = np.zeros((H, W), bool)
    unannotated = set()
    by_window = {tuple(t["data"]["chip"]["window"]): t for t in tasks}
    never = {(64, 128), (204, 0)}
    skipped = (128, 314)
    assert never | {skipped} <= {w[:2] for w in by_window}
    for (r0, c0, h, w), t in sorted(by_window.items()):
        if (r0, c0) in never:
            unannotated.add(t["id"])
            continue
        if (r0, c0) == skipped:
            ls.post(f"/api/tasks/{t['id']}/annotations", json={"result": [], "was_cancelled": True})
            unannotated.add(t["id"])
            continue
        chip_gt = gt[r0: r0 + h, c0: c0 + w]
        ann = ls.post(f"/api/tasks/{t['id']}/annotations", json=brush_annotation(chip_gt))
        if chip_gt.any():
            np.testing.assert_array_equal(decode(ann["result"][0]), chip_gt)  # LS stored the RLE unchanged
        covered[r0: r0 + h, c0: c0 + w] = True
    assert not covered.all()  # the unannotated chips leave holes

    # 5. back onto the scene through LS's API
    token = ls.session.headers["Authorization"].split()[1]
    stitched_dir = tmp_path / "stitched"
    assert refseg(["export", "--data", f"ls:{pid}", "--ls-url", ls.url, "--ls-token", token, "--to", "scene",
                   str(stitched_dir)]) == 0
    captured = capsys.readouterr()
    report = json.loads((stitched_dir / "report.json").read_text())
    [g] = report["groups"]
    assert g["expression"] == EXPRESSION
    with RasterReader(scene) as src, RasterReader(g["mask"]) as r:
        assert r.georef == src.georef  # transform, CRS and GeoKeys identical
        assert r.shape == (H, W) and r.count == 1
        stitched = r.read_window()[..., 0]
    assert set(np.unique(stitched)) <= {0, 255}
    stitched = stitched > 0
    assert np.array_equal(stitched[covered], gt[covered])  # exact wherever an annotated chip covers the scene
    assert not stitched[~covered].any()
    assert g["covered_pixels"] == covered.sum() and g["target_pixels"] == stitched.sum()
    assert {e["task"] for e in g["unannotated"]} == unannotated and g["chips_unannotated"] == len(unannotated)
    assert any(e["reason"] == "skipped (cancelled)" for e in g["unannotated"])
    assert g["windows_without_task"] == 1 and g["missing_windows"] == [[0, W - CHIP, CHIP, CHIP]]  # nodata chip
    assert "without a usable annotation" in captured.err
    print(f"\n[e2e] scene {H}x{W}: {len(tasks)} chip tasks predicted ({base}), {len(tasks) - len(unannotated)} "
          f"annotated, stitched {int(stitched.sum())} target px over {int(covered.sum())} covered px, "
          f"{len(unannotated)} chips reported unannotated")
    assert Path(g["geojson"]).exists()
