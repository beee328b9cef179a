"""Study: zoom-in clicks (`refseg_model.zoom_in`) on the annotator-effort protocol, side by side with the full image.

Most NoC@85 failures are small objects (benchmarks/annotator_effort.py, NoF@85 by target area): the demo's SAM
image embedding is 32 x 32 for a 128 px frame, so a 10 x 12 px object covers about 3 x 3 tokens. With zoom-in
(RITM's `ZoomIn`, FocalClick) `RefSegPredictor.predict_sequence` answers the second and later clicks on a crop
around the previous mask and the positive clicks (expanded by `--expand`, at least `--min-crop` px, square,
inside the image), encoded at the model's input size, and pastes the crop's logits back; the crop gets the
clicks inside it and the previous logits cropped to it, not the expression. It zooms only while the previous
mask's box is at most `--max-object` px on its longer side (px of the 128 px scenes; the product's `ZoomIn`
holds the same as fractions of the image side).

The same simulated annotator as `annotator_effort.py` (`evaluate.simulate_clicks`, through `predict_sequence`),
in-process, on the same held-out samples (seed 20_261_202), once with the predictor's zoom off and once on.
Prints NoC/NoF/IoU@k and NoF@85 by target area.

Measured (100 held-out `default` samples; NoC@85 / NoF@85 / IoU@3, full image -> zoom-in):
  demo-v2 (never saw crops)     text + clicks 4.39 / 17 / 0.832 -> 3.71 / 11 / 0.703; clicks 5.58 -> 4.44
  demo-v2 + 800 decoder steps   text + clicks 4.68 / 19 / 0.868 -> 3.71 / 12 / 0.760; clicks 5.54 -> 4.69
  the same with --zoom-frac 0.5 text + clicks 4.57 / 18 / 0.848 -> 3.44 / 11 / 0.827; clicks 5.85 -> 4.78
  demo-v3 (2,400 such steps)    text + clicks 4.40 / 16 / 0.874 -> 3.20 /  8 / 0.835; clicks 5.16 -> 4.03
(demo-v3 leaves a crop's answer to its first prompt alone out of the loss, the row above does not; see
`modeling.loss.interactive_pass_loss`)
A model that never saw upsampled crops answers some first zoomed clicks worse than the full image (IoU 0.98 ->
0.47, recovering over the next clicks): IoU@3 falls. Keeping the full-image answer when the zoomed one agrees
with fewer clicks, or has a lower predicted IoU, did not stop that (IoU@3 0.724 / 0.752, NoC 3.71 / 4.23);
training with crops (`refseg train --zoom-frac`) did. Zoom-in is on in the product for checkpoints trained so
(`CLICK_ZOOM=auto`), the shipped demo among them.

Cost of deciding (`--upscale K`): whether to zoom, a click needs the previous answer's mask at the image's
size; `RefSegPredictor._surely_large` rules out large answers from the frame-size logits and four exactly
evaluated pixels first, so only answers that may be small pay for the H x W logits. With K > 1 the study instead
times the same clicks (the simulated annotator's 5 on the 128 px scene, scaled; text + clicks; scenes upscaled
K x, nearest) with that check and with the H x W logits for every decision, alternating per sample, and checks
that both give the same masks. Measured (demo-v3, 20 samples, one thread, 2 cores, another test run beside it):
16 x (2048 px) 191 -> 161 ms per click, 1.19x; 40 x (5120 px) 827 -> 706 ms, 1.17x. Most of what is left is the
answer's confidence score over all H x W pixels (about 3/4 of a click at 5120 px; the logits' upsampling ~1/8).

Run:  PYTHONPATH=. python benchmarks/zoom_in_study.py [--checkpoint demo] [--samples 100] [--style default]
      [--min-crop 40] [--expand 1.4] [--max-object 24] [--modes text+clicks,clicks] [--upscale K]
"""
from __future__ import annotations

import argparse
import time

import torch
from annotator_effort import failures_by_area, summarise

from refseg_model.data.sources import synth_val_samples
from refseg_model.evaluate import simulate_clicks
from refseg_model.predictor import RefSegPredictor
from refseg_model.zoom_in import ZoomIn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--style", default="default", choices=["default", "shifted"])
    ap.add_argument("--min-crop", type=int, default=40)
    ap.add_argument("--expand", type=float, default=1.4)
    ap.add_argument("--max-object", type=int, default=24)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--modes", default="text+clicks,clicks")
    ap.add_argument("--upscale", type=int, default=1, help="K > 1: time the zoom decision on K x upscaled scenes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    predictor = RefSegPredictor.from_spec(args.checkpoint, cache_size=64, zoom="off")
    size = predictor.image_size
    samples = synth_val_samples(args.style, size, args.samples, seed=20_261_202)
    areas = [int(gt.sum()) for _, gt, _ in samples]
    zoom = ZoomIn(max_object=args.max_object / size, min_crop=args.min_crop / size, expand=args.expand)
    if args.upscale > 1:
        return decision_timing(predictor, samples, zoom, args.upscale)
    print(f"checkpoint {args.checkpoint} ({predictor.version}), {len(samples)} held-out {args.style} samples; zoom-in: "
          f"min crop {args.min_crop} px, expand {args.expand}, objects up to {args.max_object} px")
    print(f"{'mode':<26}{'NoC@85':>8}{'NoC@90':>8}{'NoF@85':>8}{'IoU@1':>8}{'IoU@3':>8}{'IoU@5':>8}  NoF@85 by area")
    for mode in args.modes.split(","):
        for label, predictor.zoom in (("full image", None), ("zoom-in", zoom)):
            curves = [simulate_clicks(predictor, img, gt, expr if mode == "text+clicks" else None, args.max_clicks)
                      for img, gt, expr in samples]
            r = summarise(curves, [], args.max_clicks)
            by_area = " ".join(f"{k} {v[0]}/{v[1]}" for k, v in failures_by_area(curves, areas).items())
            print(f"{mode + ', ' + label:<26}{r['NoC@85']:>8.2f}{r['NoC@90']:>8.2f}{r['NoF@85']:>8d}"
                  f"{r['IoU@1']:>8.3f}{r['IoU@3']:>8.3f}{r['IoU@5']:>8.3f}  {by_area}", flush=True)


def decision_timing(predictor: RefSegPredictor, samples, zoom: ZoomIn, k: int, clicks: int = 5) -> None:
    """Per-click seconds of text + clicks sequences on k x upscaled scenes, zoom on, with the predictor's
    large-answer check and with the H x W logits for every decision, alternating per sample. The clicks are the
    simulated annotator's on the original scene, scaled (its error-region search at 5000 px would take longer
    than the clicks)."""
    import numpy as np

    from refseg_model.predictor import AnswerMemory

    predictor.zoom = zoom
    surely_large = predictor._surely_large
    seconds = {"frame check": [], "H x W always": []}
    for img, gt, expr in samples:
        points = []
        simulate_clicks(predictor, img, gt, expr, clicks, clicks=points)
        points = [((x + 0.5) * k - 0.5, (y + 0.5) * k - 0.5, pos) for x, y, pos in points]
        img = np.kron(img, np.ones((k, k, 1), dtype=np.uint8))
        masks = []
        for label, check in (("frame check", surely_large), ("H x W always", lambda item, low_res: False)):
            predictor._surely_large = check
            predictor.cache.clear()  # both start from a cold image: the same work before the clicks
            memory = AnswerMemory()
            key, _ = predictor.embed(img)
            predictor.predict_sequence(img, expr, [], None, memory, key)  # the text's answer, before the clicks
            masks.append([])
            for i in range(1, len(points) + 1):
                t0 = time.perf_counter()
                masks[-1].append(predictor.predict_sequence(img, expr, points[:i], None, memory, key).mask)
                seconds[label].append(time.perf_counter() - t0)
        assert all(np.array_equal(a, b) for a, b in zip(*masks)), "the check changed an answer"
    predictor._surely_large = surely_large
    a, b = (float(np.mean(v)) for v in seconds.values())
    print(f"{len(samples)} samples at {img.shape[1]} x {img.shape[0]} px, {clicks} clicks each, zoom on: per click "
          f"{b * 1000:.0f} ms (H x W logits for every decision) -> {a * 1000:.0f} ms (frame check first), "
          f"{b / a:.2f}x; same masks")


if __name__ == "__main__":
    main()
