"""Training data: geometry augmentation, the synthetic scene generator, and the per-rank training streams."""
