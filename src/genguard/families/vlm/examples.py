"""A toy world for the family's checks (the learning test, the GPU check): smooth random textures as "real"
images, the same plus a period-2 checkerboard (the trace a transposed-convolution up-sampler leaves) as
"fake" ones. Plain to the spectrum expert, learnable by a tiny policy in seconds; not a benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage


def grid_image(seed: int, size: int, fake: bool, amplitude: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(size, size, 3)), (2, 2, 0))
    pixels = 128 + 50 * field / (field.std() + 1e-9) + rng.normal(0, 2, (size, size, 3))
    if fake:
        y, x = np.indices((size, size))
        pixels = pixels + amplitude * ((x + y) % 2 * 2 - 1)[..., None]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def toy_manifest(root: str | Path, n: int, size: int, n_train: int) -> pd.DataFrame:
    """``n`` PNGs under ``root/images`` (odd index = fake), the first ``n_train`` in the train split, the rest
    in test: a manifest in the AIGI columns REVEAL-Bench reads (path, label, split, generator, sha256)."""
    rows = []
    for i in range(n):
        path = Path(root) / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid_image(i, size, bool(i % 2))).save(path)
        rows.append({"path": str(path), "label": i % 2, "split": "train" if i < n_train else "test",
                     "generator": "grid", "sha256": f"{i:064x}"})
    return pd.DataFrame(rows)
