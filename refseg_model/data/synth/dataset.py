"""Generated scenes written as an interchange-layout data set on disk."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

from PIL import Image

from formats.datasets.interchange import write_annotations
from formats.datasets.splits import counted_splits
from formats.images import save_mask

from .generator import SceneGenerator


def write_dataset(out_dir: Union[str, Path], n_images: int, size: int = 128, style: str = "default", seed: int = 0,
                  expressions_per_image: int = 3, split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  progress: bool = True, difficulty: float = 1.0) -> int:
    """Write `n_images` scenes as an interchange-layout data set and return the number of samples.

    Layout: images/NNNNNN.png, masks/NNNNNN_K.png (8-bit, 255 = target) and annotations.jsonl. The split is
    assigned per image, so all expressions of an image share it. Deterministic for a given seed.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    splits = counted_splits(n_images, split_fractions, seed)
    gen = SceneGenerator(size, style, seed)
    records = []
    for i in tqdm(range(n_images), disable=not progress, desc=f"synth {style}", unit="img"):
        sc = gen.scene(difficulty, expressions_per_image)
        image = f"images/{i:06d}.png"
        Image.fromarray(sc.image).save(out / image)
        for k, smp in enumerate(sc.samples):
            mask = f"masks/{i:06d}_{k}.png"
            save_mask(smp.mask, out / mask)
            records.append({"image": image, "mask": mask, "expression": smp.expression, "split": splits[i]})
    write_annotations(out, records)
    return len(records)
