"""Training curves: the loss terms (EMA) and validation metrics of a training history, as one PNG figure."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List


def plot_history(history: List[Dict[str, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "bce", "dice", "dense", "contrast", "orth"):
        if any(key in h for h in history):
            axes[0].plot(steps, [h.get(key, float("nan")) for h in history], label=key)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss (EMA)")
    axes[0].set_yscale("log")
    axes[0].legend()
    for key in ("val_gIoU", "val_cIoU", "val_Pr@0.5"):
        if any(key in h for h in history):
            axes[1].plot(steps, [h.get(key, float("nan")) for h in history], label=key[4:])
    axes[1].set_xlabel("step")
    axes[1].set_title("validation")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
