"""`refseg export` from Label Studio: a JSON export file (ls-json:FILE) and the REST API (ls:PROJECT), to the
interchange and RRSIS-D layouts. The masks must be pixel-identical to what label-studio-sdk decodes from the
submitted brush RLE, and the expressions must be the submitted ones."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli.main import main as refseg
from formats.datasets.interchange import read_interchange
from formats.datasets.rrsisd import read_rrsisd
from formats.datasets.sample_mask import load_sample_mask
from formats.images import load_image
from labelstudio.brush import brush_region
from refseg_model.data.synth import write_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Text name="expr" value="$expression"/>
  <TextArea name="prompt" toName="image" editable="true" maxSubmissions="1" showSubmitButton="true"/>
  <BrushLabels name="mask" toName="image"><Label value="target"/></BrushLabels>
</View>"""


def sdk_decode(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def _annotation(aid, regions, *, cancelled=False, ground_truth=False, updated="2026-01-01T00:00:00Z", text=None):
    result = list(regions)
    if text is not None:
        result.append({"id": f"t{aid}", "from_name": "prompt", "to_name": "image", "type": "textarea",
                       "value": {"text": [text]}})
    return {"id": aid, "result": result, "was_cancelled": cancelled, "ground_truth": ground_truth,
            "updated_at": updated, "created_at": updated, "completed_by": 1}


@pytest.fixture(scope="module")
def ls_project(tmp_path_factory):
    """Images under DOCROOT/ds (served by LS as local files) and tasks as Label Studio exports them.

    Returns (docroot, tasks, expected) with expected = {task id: (mask, expression)} for the tasks that must be
    exported; the other tasks are unlabelled, skipped ("cancelled") or have an empty annotation."""
    base = tmp_path_factory.mktemp("lsexport")
    synth = base / "synth"
    write_dataset(synth, n_images=5, size=64, seed=3, expressions_per_image=1, progress=False)
    samples = read_interchange(synth)
    docroot = base / "docroot"
    (docroot / "ds").mkdir(parents=True)
    tasks, expected = [], {}
    rng = np.random.default_rng(0)
    for i, s in enumerate(samples):
        name = Path(s.image).name
        (docroot / "ds" / name).write_bytes(Path(s.image).read_bytes())
        tid = 10 + i
        task = {"id": tid, "project": 1, "data": {"image": f"/data/local-files/?d=ds/{name}",
                                                  "expression": s.expression},
                "annotations": [], "predictions": [], "meta": {}}
        gt = load_sample_mask(s)
        # the "annotator's correction": the ground truth with a few pixels flipped (not a copy of the source)
        corrected = gt.copy()
        corrected[rng.integers(0, 64, 5), rng.integers(0, 64, 5)] ^= True
        region = brush_region(corrected, from_name="mask", to_name="image", label="target")
        if i == 0:  # typed expression (TextArea) overrides the task data's
            task["annotations"] = [_annotation(100 + i, [region], text="the typed expression")]
            expected[tid] = (sdk_decode(region), "the typed expression")
        elif i == 1:  # an older ground-truth annotation wins over a newer ordinary one
            older = brush_region(gt, from_name="mask", to_name="image", label="target")
            task["annotations"] = [_annotation(200, [older], ground_truth=True, updated="2026-01-01T00:00:00Z"),
                                   _annotation(201, [region], updated="2026-02-01T00:00:00Z")]
            expected[tid] = (sdk_decode(older), s.expression)
        elif i == 2:  # skipped by the annotator
            task["annotations"] = [_annotation(300, [region], cancelled=True)]
        elif i == 3:  # two brush regions: their union
            extra = np.zeros_like(gt)
            extra[:4, :4] = True
            region2 = brush_region(extra, from_name="mask", to_name="image", label="target")
            task["annotations"] = [_annotation(400, [region, region2])]
            expected[tid] = (sdk_decode(region) | sdk_decode(region2), s.expression)
        else:  # plain case
            task["annotations"] = [_annotation(500 + i, [region])]
            expected[tid] = (sdk_decode(region), s.expression)
        tasks.append(task)
    tasks.append({"id": 99, "project": 1, "data": {"image": "/data/local-files/?d=ds/none.png", "expression": "x"},
                  "annotations": []})  # not labelled
    export = base / "project-1-export.json"
    export.write_text(json.dumps(tasks))
    return docroot, export, tasks, expected


def _task_of(path: str) -> int:
    return int(Path(path).stem.removeprefix("task"))


def test_ls_json_to_interchange(ls_project, tmp_path, capsys):
    docroot, export, tasks, expected = ls_project
    out = tmp_path / "inter"
    rc = refseg(["export", "--data", f"ls-json:{export}", "--images-root", str(docroot), "--to", "interchange",
                 str(out)])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert report["samples"] == len(expected) == 4
    assert report["tasks"] == len(tasks) and report["skipped"] == 2
    samples = read_interchange(out)
    assert {_task_of(s.mask) for s in samples} == set(expected)
    for s in samples:
        tid = _task_of(s.mask)
        mask, expression = expected[tid]
        got = load_sample_mask(s)
        assert got.shape == mask.shape and np.array_equal(got, mask), f"task {tid}: mask differs"
        assert s.expression == expression
        assert s.split == "train"
        # the image is the task's image, bytes unchanged
        src = docroot / "ds" / tasks[[t["id"] for t in tasks].index(tid)]["data"]["image"].split("ds/")[1]
        assert Path(s.image).read_bytes() == src.read_bytes()


def test_ls_json_to_rrsisd(ls_project, tmp_path, capsys):
    docroot, export, tasks, expected = ls_project
    out = tmp_path / "rrsisd"
    assert refseg(["export", "--data", f"ls-json:{export}", "--images-root", str(docroot), "--to", "rrsis-d",
                   str(out), "--splits", "0.5,0.25,0.25"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 4 and sum(report["splits"].values()) == 4 and len(report["splits"]) == 3
    samples = read_rrsisd(out)
    assert len(samples) == 4
    # RRSIS-D renames the images: match the samples to tasks by expression + mask
    remaining = dict(expected)
    for s in samples:
        got = load_sample_mask(s)
        match = [tid for tid, (m, e) in remaining.items() if e == s.expression and np.array_equal(m, got)]
        assert match, f"no submitted (mask, expression) equals the exported {s.expression!r}"
        remaining.pop(match[0])
        assert load_image(s.image).shape[:2] == got.shape
    assert not remaining


def test_ls_json_label_config_inferred_or_given(ls_project, tmp_path, capsys):
    docroot, export, tasks, expected = ls_project
    cfg = tmp_path / "config.xml"
    cfg.write_text(CONFIG)
    for extra in ([], ["--label-config", str(cfg)]):
        out = tmp_path / f"inter{len(extra)}"
        assert refseg(["export", "--data", f"ls-json:{export}", "--images-root", str(docroot), "--to",
                       "interchange", str(out), "--split", "train", *extra]) == 0
        assert json.loads(capsys.readouterr().out)["samples"] == 4


def test_ls_json_errors(ls_project, tmp_path, capsys):
    docroot, export, tasks, expected = ls_project
    # images cannot be found: every task skipped, clear message, rc 2
    assert refseg(["export", "--data", f"ls-json:{export}", "--images-root", str(tmp_path), "--to", "interchange",
                   str(tmp_path / "o1")]) == 2
    captured = capsys.readouterr()
    assert "no exportable annotated task" in captured.err
    assert "not found under" in json.dumps(json.loads(captured.out)["skipped_tasks"])
    bad = tmp_path / "min.json"
    bad.write_text(json.dumps([{"image": "x.png", "mask": []}]))
    assert refseg(["export", "--data", f"ls-json:{bad}", "--to", "interchange", str(tmp_path / "o2")]) == 2
    assert "JSON-MIN" in capsys.readouterr().err


def test_ls_project_through_the_api(ls_project, tmp_path, capsys, monkeypatch):
    """ls:PROJECT against a stand-in of LS's REST API (tests/backend/fake_ls.py): images downloaded from LS."""
    sys.path.insert(0, str(ROOT / "tests" / "backend"))
    try:
        from fake_ls import TOKEN, FakeLabelStudio
    finally:
        sys.path.pop(0)
    docroot, export, tasks, expected = ls_project
    ls = FakeLabelStudio()
    try:
        ls.projects[7] = {"id": 7, "label_config": CONFIG}
        for t in tasks:
            t = json.loads(json.dumps(t))
            name = t["data"]["image"].split("ds/")[1]
            t["data"]["image"] = f"/data/upload/7/{name}"
            if (docroot / "ds" / name).is_file():
                ls.files[t["data"]["image"]] = (docroot / "ds" / name).read_bytes()
            t["project"] = 7
            t["total_annotations"] = len(t["annotations"])
            ls.tasks[t["id"]] = t
        monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
        out = tmp_path / "api"
        assert refseg(["export", "--data", "ls:7", "--to", "interchange", str(out)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["samples"] == 4
        for s in read_interchange(out):
            mask, expression = expected[_task_of(s.mask)]
            assert np.array_equal(load_sample_mask(s), mask) and s.expression == expression
        monkeypatch.delenv("LABEL_STUDIO_API_KEY")
        assert refseg(["export", "--data", "ls:7", "--to", "interchange", str(tmp_path / "x")]) == 2
        assert "API key" in capsys.readouterr().err
    finally:
        ls.close()


def test_refseg_model_does_not_import_web_code():
    code = ("import sys, cli.main; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('backend', 'workers', 'flask', 'rq', 'redis', 'requests')); print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_skipped_tasks_are_summarised_by_kind(tmp_path):
    """The reasons `write_task_samples` gives, counted by kind (what a skipped fine-tune reports)."""
    from labelstudio.labelconfig import parse_label_config
    from labelstudio.samples import skip_summary, write_task_samples

    cfg = parse_label_config('<View><Image name="image" value="$image"/><Text name="e" value="$expression"/>'
                             '<BrushLabels name="mask" toName="image"><Label value="t"/></BrushLabels></View>')
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True

    def task(tid, expression="the block", m=mask, annotated=True):
        region = brush_region(m, from_name="mask", to_name="image", label="t")
        return {"id": tid, "data": {"image": f"/img/{tid}.png", **({"expression": expression} if expression else {})},
                "annotations": [{"id": tid * 10, "result": [region], "was_cancelled": False}] if annotated else []}

    def fetch(url, tid):
        if tid == 6:
            raise ValueError("cannot decode")
        return np.zeros((8, 8, 3), np.uint8) if tid != 7 else np.zeros((9, 8, 3), np.uint8)

    tasks = [task(1), task(2, expression=None), task(3, expression=None), task(4, annotated=False),
             task(5, m=np.zeros((8, 8), bool)), task(6), task(7)]
    records, skipped = write_task_samples(tasks, cfg, fetch, tmp_path)
    assert [r["task"] for r in records] == [1]
    summary = dict(part.split(" ", 1)[::-1] for part in skip_summary(skipped).split(", "))
    assert summary == {"no referring expression": "2", "image unreadable": "1", "empty mask": "1",
                       "mask size differs from the image": "1", "not annotated": "1"}
    assert skip_summary(skipped).startswith("2 no referring expression") and skip_summary([]) == ""


def test_clicks_only_masks_are_samples_for_finetuning_only():
    """A label config without Text/TextArea: with allow_clicks_only (the fine-tune) each mask is a sample with
    expression "", for the click path; exports and text configs still need an expression."""
    from labelstudio.labelconfig import parse_label_config
    from labelstudio.samples import has_expression_source, task_sample

    brush = '<BrushLabels name="mask" toName="image"><Label value="t"/></BrushLabels>'
    clicks = parse_label_config('<View><Image name="image" value="$image"/><KeyPointLabels name="k" toName="image" '
                                f'smart="true"><Label value="o"/></KeyPointLabels>{brush}</View>')
    text = parse_label_config(f'<View><Image name="image" value="$image"/><Text name="e" value="$expression"/>{brush}'
                              '</View>')
    assert not has_expression_source(clicks) and has_expression_source(text)
    mask = np.zeros((8, 8), bool)
    mask[1:4, 2:6] = True
    task = {"id": 1, "data": {"image": "/img/1.png"},
            "annotations": [{"id": 10, "was_cancelled": False,
                             "result": [brush_region(mask, from_name="mask", to_name="image", label="t")]}]}
    sample, _ = task_sample(clicks, task, allow_clicks_only=True)
    assert sample[1] == "" and np.array_equal(sample[0], mask)
    no_text = (None, "no referring expression (TextArea text or task data)")
    assert task_sample(clicks, task) == no_text and task_sample(text, task, allow_clicks_only=True) == no_text
