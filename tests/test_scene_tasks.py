"""A GeoTIFF scene -> chips + Label Studio tasks (`refseg tasks`) -> annotations -> one stitched, georeferenced
mask per (scene, expression) (`refseg export --to scene`), on small synthetic scenes.

The round trip must give back the ground truth exactly wherever an annotated chip covers the scene, with the
scene's georeference unchanged; chips without annotation must be reported, never taken as background.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scene_support import scene_ground_truth

from cli.main import main as refseg
from formats.georef import GeoReference
from formats.geotiff_writer import write_geotiff
from formats.raster import load_raster
from formats.raster_reader import RasterReader
from labelstudio.brush import brush_region, rle_to_mask
from labelstudio.chip_georef import ChipGeoref
from labelstudio.scene_tasks import DEFAULT_CONFIG, Chip, chip_tasks, chip_windows
from labelstudio.stitch import PackedMask, stitch_chips

ROOT = Path(__file__).resolve().parents[1]
UTM = GeoReference((0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0), "EPSG:32633")
H, W, CHIP, OVERLAP = 300, 410, 96, 32  # stride 64; the last row/column of chips ends flush with the scene


def _ground_truth(seed: int) -> np.ndarray:
    return scene_ground_truth(H, W, seed, objects=7, first_row=120)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 4-band uint16 GeoTIFF (UTM) with a nodata block top right that makes one chip nodata-only."""
    base = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(1)
    data = rng.integers(200, 3000, (H, W, 4)).astype(np.uint16)
    data[..., 3] += 2000  # band 4 brighter: a stretch that ignored --bands would show it
    data[:110, 300:] = 0  # nodata (all bands 0)
    path = base / "scene_a.tif"
    write_geotiff(path, data, UTM, nodata=0, tile=64)
    return path


def _make_tasks(scene: Path, out: Path, docroot: Path, *extra: str) -> dict:
    docroot.mkdir(parents=True, exist_ok=True)
    code = refseg(["tasks", str(scene), "--chip", str(CHIP), "--overlap", str(OVERLAP), "--expression", "the pond",
                   "--expression", "the road", "--out", str(out), "--local-files-root", str(docroot),
                   "--bands", "4,3,2", "--stretch", "2,98", *extra])
    assert code == 0
    return json.loads((out / "tasks.json").read_text())


def _annotate(task: dict, mask: np.ndarray, aid: int, **kw) -> None:
    result = [brush_region(mask, from_name="mask", to_name="image", label="target")] if mask.any() else []
    task["annotations"] = [{"id": aid, "result": result, "was_cancelled": False, "ground_truth": False,
                            "updated_at": "2026-01-01T00:00:00Z", **kw}]


def _window(task: dict):
    return tuple(task["data"]["chip"]["window"])


def test_tasks_chips_and_georeference(scene, tmp_path, capsys):
    docroot = tmp_path / "docroot"
    tasks = _make_tasks(scene, docroot / "scenes", docroot)
    report = json.loads(capsys.readouterr().out)
    windows = chip_windows(H, W, CHIP, OVERLAP)
    nodata_window = (0, W - CHIP, CHIP, CHIP)
    assert nodata_window in windows and all(w[2:] == (CHIP, CHIP) for w in windows)
    [sc] = report["scenes"]
    assert (sc["windows"], sc["nodata_chips"], sc["chips"]) == (len(windows), 1, len(windows) - 1)
    assert report["tasks"] == len(tasks) == 2 * (len(windows) - 1)
    assert nodata_window not in {_window(t) for t in tasks}  # nodata-only chip: no task, no PNG
    assert not (docroot / "scenes" / "scene_a" / f"r000000_c{W - CHIP:06d}.png").exists()
    # bands 4,3,2 and ONE stretch for the whole scene: each chip is the scene rendered by `refseg predict`, cut
    whole = load_raster(scene, bands="4,3,2", stretch="2,98").pixels
    with RasterReader(scene) as reader:
        scene_georef = reader.georef
    for task in tasks[::2]:
        d = task["data"]
        r0, c0, h, w = _window(task)
        url = d["image"]
        assert url == f"/data/local-files/?d=scenes/scene_a/r{r0:06d}_c{c0:06d}.png"
        chip = np.asarray(Image.open(docroot / url.split("?d=")[1]))
        assert np.array_equal(chip, whole[r0: r0 + h, c0: c0 + w])
        geo = d["chip"]
        assert geo["scene"] == "scene_a" and geo["scene_size"] == [H, W] and geo["crs"] == "EPSG:32633"
        assert geo["transform"] == [0.5, 0.0, 500000.0 + 0.5 * c0, 0.0, -0.5, 5000000.0 - 0.5 * r0]
        assert ChipGeoref.from_data(geo).scene_georef == scene_georef
        assert geo["bands"] == [4, 3, 2] and len(geo["stretch"]["lo"]) == 3
    assert {t["data"]["expression"] for t in tasks} == {"the pond", "the road"}
    # the backend turns these tasks into prediction jobs like any other: image URL + expression, nothing else
    from backend.predict import PredictService

    job, why = PredictService._job_task(DEFAULT_CONFIG, {"id": 5, **tasks[0]})
    assert why == "" and job == {"id": 5, "image": tasks[0]["data"]["image"], "expression": "the pond"}


def test_chips_are_the_same_read_by_row_band_or_chip_by_chip(scene, tmp_path, monkeypatch):
    """Scenes too wide for a full-width row band are read chip by chip: same chips, same nodata skipping."""
    import labelstudio.scene_tasks as st

    by_band = {c.geo.window: c.rgb for c in st.scene_chips(scene, tmp_path / "a", chip=CHIP, overlap=OVERLAP,
                                                           bands="4,3,2")}
    monkeypatch.setattr(st, "ROW_BAND_BYTES", 0)
    by_chip = {c.geo.window: c.rgb for c in st.scene_chips(scene, tmp_path / "b", chip=CHIP, overlap=OVERLAP,
                                                           bands="4,3,2")}
    assert by_band.keys() == by_chip.keys() and len(by_band) == len(chip_windows(H, W, CHIP, OVERLAP)) - 1
    assert all(np.array_equal(by_band[w], by_chip[w]) for w in by_band)


def test_round_trip_stitches_the_ground_truth_exactly(scene, tmp_path, capsys):
    docroot = tmp_path / "docroot"
    tasks = _make_tasks(scene, docroot / "scenes", docroot)
    gt = {"the pond": _ground_truth(2), "the road": _ground_truth(3)}
    unannotated, covered = set(), np.zeros((H, W), bool)
    for i, task in enumerate(tasks):
        task["id"] = 1000 + i
        r0, c0, h, w = _window(task)
        expression = task["data"]["expression"]
        if expression == "the pond" and (r0, c0) in ((64, 128), (204, 0)):
            unannotated.add(task["id"])  # never opened
            continue
        if expression == "the pond" and (r0, c0) == (128, 314):
            task["annotations"] = [{"id": 1, "result": [], "was_cancelled": True}]  # skipped by the annotator
            unannotated.add(task["id"])
            continue
        _annotate(task, gt[expression][r0: r0 + h, c0: c0 + w], task["id"])  # empty chips: empty annotation
        if expression == "the pond":
            covered[r0: r0 + h, c0: c0 + w] = True
    empty = [t for t in tasks if t.get("annotations") and not t["annotations"][0]["result"]
             and not t["annotations"][0]["was_cancelled"]]
    assert len(empty) > 5  # chips without the target, submitted with no region: background, not "unannotated"
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    out = tmp_path / "stitched"
    assert refseg(["export", "--data", f"ls-json:{export}", "--to", "scene", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    groups = {g["expression"]: g for g in report["groups"]}
    assert set(groups) == {"the pond", "the road"}
    with RasterReader(scene) as reader:
        scene_georef, scene_nodata = reader.georef, reader.nodata
    all_windows = {_window(t) for t in tasks}
    for expression, g in groups.items():
        with RasterReader(g["mask"]) as r:
            assert r.georef == scene_georef  # transform, CRS and GeoKeys identical
            assert r.shape == (H, W) and r.count == 1
            stitched = r.read_window()[..., 0]
        assert set(np.unique(stitched)) <= {0, 255}
        stitched = stitched > 0
        cov = covered if expression == "the pond" else np.zeros((H, W), bool)
        if expression == "the road":
            for r0, c0, h, w in all_windows:
                cov[r0: r0 + h, c0: c0 + w] = True
        assert np.array_equal(stitched[cov], gt[expression][cov])  # exact where annotated chips cover
        assert not stitched[~cov].any()  # not covered: 0 (and reported below)
        assert g["covered_pixels"] == cov.sum() and g["target_pixels"] == stitched.sum()
        # polygons in the scene's CRS, area = pixels x pixel area
        fc = json.loads(Path(g["geojson"]).read_text())
        assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
        assert sum(f["properties"]["pixels"] for f in fc["features"]) == stitched.sum()
        xs = [x for f in fc["features"] for x, _ in f["geometry"]["coordinates"][0]]
        assert 500000.0 <= min(xs) and max(xs) <= 500000.0 + 0.5 * W
        # the nodata-only chip has no task in the export: reported as a window without task
        assert g["windows_without_task"] == 1 and g["missing_windows"] == [[0, W - CHIP, CHIP, CHIP]]
    pond = groups["the pond"]
    assert {e["task"] for e in pond["unannotated"]} == unannotated and pond["chips_unannotated"] == 3
    assert any(e["reason"] == "skipped (cancelled)" for e in pond["unannotated"])
    assert groups["the road"]["chips_unannotated"] == 0
    foot = json.loads(Path(pond["unannotated_geojson"]).read_text())
    assert len(foot["features"]) == 4 and {f["properties"]["status"] for f in foot["features"]} == {
        "unannotated", "no task in the export"}
    assert "without a usable annotation" in captured.err
    assert scene_nodata == 0


def test_overlap_rule_nearest_chip_centre_wins():
    """Two chips disagree everywhere they overlap: the seam runs through the middle of the overlap, and a
    brute-force nearest-centre assignment on a 2x2 grid with random masks gives the same mask."""
    ones, zeros = np.ones((10, 10), bool), np.zeros((10, 10), bool)
    mask, covered = stitch_chips(10, 16, [((0, 0, 10, 10), ones), ((0, 6, 10, 10), zeros)], band_rows=3)
    dense = mask.window(0, 0, 10, 16)
    assert covered == 160 and dense[:, :8].all() and not dense[:, 8:].any()
    rng = np.random.default_rng(0)
    h, w, chip = 23, 29, 15
    wins = chip_windows(h, w, chip, 6)
    masks = [rng.random((chip, chip)) < 0.5 for _ in wins]
    packed = [np.packbits(m, axis=1) for m in masks]
    got, covered = stitch_chips(h, w, list(zip(wins, packed)), band_rows=4)
    want = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            d = [((y + 0.5 - (r0 + ch / 2)) ** 2 + (x + 0.5 - (c0 + cw / 2)) ** 2, k)
                 for k, (r0, c0, ch, cw) in enumerate(wins) if r0 <= y < r0 + ch and c0 <= x < c0 + cw]
            k = min(d)[1]
            want[y, x] = masks[k][y - wins[k][0], x - wins[k][1]]
    assert np.array_equal(got.window(0, 0, h, w), want) and covered == h * w
    assert got.count() == want.sum()


def test_packed_mask_windows_bbox_count():
    rng = np.random.default_rng(4)
    dense = np.zeros((37, 53), bool)
    dense[5:20, 11:40] = rng.random((15, 29)) < 0.3
    m = PackedMask(37, 53)
    m.set_rows(0, dense[:20])
    m.set_rows(20, dense[20:])
    for r0, c0, h, w in ((0, 0, 37, 53), (3, 7, 10, 13), (20, 45, 17, 8), (0, 9, 1, 1)):
        assert np.array_equal(m.window(r0, c0, h, w), dense[r0: r0 + h, c0: c0 + w])
    ys, xs = np.nonzero(dense)
    assert m.bbox() == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) and m.count() == dense.sum()
    assert PackedMask(4, 4).bbox() is None


def test_user_defined_crs_and_no_overlap_round_trip(tmp_path):
    """GeoKeys of a user-defined CRS travel in task data and come back verbatim; overlap 0 works too."""
    geokeys = ((1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32767, 3073, 34737, 11, 0), None, "My UTM-ish|")
    georef = GeoReference((2.0, 0.0, 1000.0, 0.0, -2.0, 9000.0), "My UTM-ish", geokeys)
    rgb = np.random.default_rng(5).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    write_geotiff(tmp_path / "custom.tif", rgb, georef)
    out = tmp_path / "t"
    assert refseg(["tasks", str(tmp_path / "custom.tif"), "--chip", "40", "--overlap", "0", "--expression", "x",
                   "--out", str(out), "--image-url-prefix", "https://tiles.example/chips/"]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 2 * 3 and tasks[0]["data"]["chip"]["crs"] == "My UTM-ish"
    assert tasks[0]["data"]["image"] == "https://tiles.example/chips/custom/r000000_c000000.png"
    chip = np.asarray(Image.open(out / "custom" / "r000030_c000050.png"))
    assert np.array_equal(chip, rgb[30:70, 50:90])  # 8-bit "auto": kept as is
    gt = rgb[..., 0] > 128
    for i, t in enumerate(tasks):
        t["id"] = i
        r0, c0, h, w = _window(t)
        _annotate(t, gt[r0: r0 + h, c0: c0 + w], i)
    (tmp_path / "e.json").write_text(json.dumps(tasks))
    assert refseg(["export", "--data", f"ls-json:{tmp_path / 'e.json'}", "--to", "scene", str(tmp_path / "s")]) == 0
    [g] = json.loads((tmp_path / "s" / "report.json").read_text())["groups"]
    with RasterReader(tmp_path / "custom.tif") as a, RasterReader(g["mask"]) as b:
        assert b.georef == a.georef and b.georef.geokeys == geokeys and b.georef.crs == "My UTM-ish"
        assert np.array_equal(b.read_window()[..., 0] > 0, gt)
    assert g["chips_unannotated"] == 0 and g["windows_without_task"] == 0 and g["unannotated_geojson"] is None


def test_pre_annotations_are_the_masks_without_nodata(scene, tmp_path):
    """--predict: each task carries the predictor's mask (nodata pixels removed) as a brush pre-annotation."""
    geo = ChipGeoref("s", (0, 0, 8, 6), (8, 6), (8, 0), UTM)
    nodata = np.zeros((8, 6), bool)
    nodata[:, :2] = True
    calls = []

    def predict(rgb, expressions):
        calls.append(list(expressions))
        return [(np.ones((8, 6), bool), 0.75), (np.zeros((8, 6), bool), 0.1)]

    chip = Chip(geo, tmp_path / "c.png", np.zeros((8, 6, 3), np.uint8), nodata)
    a, b = chip_tasks(chip, "/data/local-files/?d=c.png", ["a", "b"], DEFAULT_CONFIG, predict, "demo-v1")
    assert calls == [["a", "b"]]  # one call per chip: the chip is encoded once for all expressions
    [pa] = a["predictions"]
    assert pa["model_version"] == "demo-v1" and pa["score"] == 0.75
    [region] = pa["result"]
    assert (region["from_name"], region["to_name"], region["type"]) == ("mask", "image", "brushlabels")
    assert np.array_equal(rle_to_mask(region["value"]["rle"], 8, 6), ~nodata)
    assert b["predictions"][0]["result"] == []


def test_predict_with_a_model_from_the_command_line(tmp_path, capsys):
    """`refseg tasks --predict` end to end with the tiny preset (random weights: only the format is checked)."""
    rgb = np.random.default_rng(6).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    write_geotiff(tmp_path / "s.tif", rgb, UTM)
    out = tmp_path / "t"
    assert refseg(["tasks", str(tmp_path / "s.tif"), "--chip", "48", "--overlap", "16", "--expression", "the roof",
                   "--out", str(out), "--image-url-prefix", "http://x/", "--predict", "--checkpoint", "preset:tiny",
                   "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"] is True
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == 4
    for t in tasks:
        [p] = t["predictions"]
        assert isinstance(p["score"], float) and p["model_version"]
        for region in p["result"]:
            assert rle_to_mask(region["value"]["rle"], 48, 48).shape == (48, 48)


@pytest.mark.parametrize("case", ["no-expression", "not-tiff", "missing-root", "bad-overlap", "missing-scene",
                                  "no-url", "bad-bands", "export-not-ls", "export-no-chips", "export-missing"])
def test_bad_input_is_a_clear_error(case, scene, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    out = tmp_path / "out"
    base = ["tasks", str(scene), "--out", str(out), "--image-url-prefix", "http://x", "--expression", "e"]
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    (tmp_path / "plain.json").write_text(json.dumps([{"id": 1, "data": {"image": "a.png"}, "annotations": []}]))
    argv, message = {
        "no-expression": (["tasks", str(scene), "--out", str(out), "--image-url-prefix", "http://x"],
                          "no referring expression"),
        "not-tiff": (["tasks", str(png), "--out", str(out), "--image-url-prefix", "x", "--expression", "e"],
                     "not a (Geo)TIFF"),
        "missing-root": (["tasks", str(scene), "--out", str(out), "--local-files-root", str(tmp_path / "docroot"),
                          "--expression", "e"], "not a folder"),
        "bad-overlap": (base + ["--chip", "64", "--overlap", "64"], "--overlap must be"),
        "missing-scene": (["tasks", str(tmp_path / "nope.tif")] + base[2:], "not found"),
        "no-url": (["tasks", str(scene), "--out", str(out), "--expression", "e"], "--local-files-root"),
        "bad-bands": (base + ["--bands", "5,3,2"], "band 5 does not exist"),
        "export-not-ls": (["export", "--data", str(tmp_path), "--to", "scene", str(out)], "--data ls-json:FILE"),
        "export-no-chips": (["export", "--data", f"ls-json:{tmp_path / 'plain.json'}", "--to", "scene", str(out)],
                            "no annotated scene chip"),
        "export-missing": (["export", "--data", f"ls-json:{tmp_path / 'x.json'}", "--to", "scene", str(out)],
                           "cannot read"),
    }[case]
    assert refseg(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "tasks.json").exists()


def test_output_outside_the_local_files_root_is_refused(scene, tmp_path, capsys):
    (tmp_path / "docroot").mkdir()
    assert refseg(["tasks", str(scene), "--out", str(tmp_path / "elsewhere"), "--local-files-root",
                   str(tmp_path / "docroot"), "--expression", "e"]) == 2
    assert "not inside the local-files root" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere" / "tasks.json").exists()


def test_ls_project_source_reports_unannotated_tasks(scene, tmp_path, capsys, monkeypatch):
    """ls:PROJECT reads ALL tasks through the API (tests/backend/fake_ls.py), so unopened chips are listed."""
    sys.path.insert(0, str(ROOT / "tests" / "backend"))
    try:
        from fake_ls import TOKEN, FakeLabelStudio
    finally:
        sys.path.pop(0)
    tasks = _make_tasks(scene, tmp_path / "docroot" / "s", tmp_path / "docroot")
    capsys.readouterr()
    gt = _ground_truth(3)
    ls = FakeLabelStudio()
    try:
        ls.projects[3] = {"id": 3, "label_config": (ROOT / "README.md").read_text().split("```xml\n")[1].split("```")[0]}
        for i, t in enumerate(tasks):
            t.update(id=50 + i, project=3, annotations=[])
            if i % 4 and t["data"]["expression"] == "the road":  # nobody started "the pond"
                r0, c0, h, w = _window(t)
                _annotate(t, gt[r0: r0 + h, c0: c0 + w], i)
            ls.tasks[t["id"]] = t
        monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
        assert refseg(["export", "--data", "ls:3", "--to", "scene", str(tmp_path / "out")]) == 0
    finally:
        ls.close()
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    [g] = summary["groups"]
    road = [(i, t) for i, t in enumerate(tasks) if t["data"]["expression"] == "the road"]
    expected = sorted(t["id"] for i, t in road if i % 4 == 0)
    assert g["expression"] == "the road" and g["chips_unannotated"] == len(expected)
    full = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(e["task"] for e in full["groups"][0]["unannotated"]) == expected
    [pond] = full["groups_without_annotation"]  # no file for it, but counted and warned about
    assert pond["expression"] == "the pond" and pond["chips_unannotated"] == len(tasks) - len(road)
    assert full["chips_unannotated"] == len(tasks) - len(road) + len(expected)
    assert f"{full['chips_unannotated'] + 1} chip window(s) without a usable annotation" in captured.err


def test_labelstudio_modules_do_not_import_torch():
    code = ("import sys, labelstudio.scene_tasks, labelstudio.stitch, labelstudio.chip_georef; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m == 'refseg_model.predictor'); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
