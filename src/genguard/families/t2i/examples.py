"""Tiny, runnable examples of every trainable of the text-to-image family (the method contract test runs
each): a spec that builds in about a second on a CPU and an in-memory dataset of the right shape."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from genguard.families.t2i.erasure import ESDEraser, TICoEEraser
from genguard.families.t2i.evaluator import CLASSIFIER_METHOD, LabelledImages
from genguard.families.t2i.response_space import METHOD as SET_METHOD
from genguard.families.t2i.response_space import FeatureRows
from genguard.families.t2i.shapes import ShapesWorld, render_rows, sample_rows
from genguard.families.t2i.testbed import METHOD as TESTBED_METHOD

TINY_WORLD = ShapesWorld(image_size=16)
TINY_TESTBED: dict[str, Any] = {
    "image_size": 16, "vae": {"channels": [16, 32]}, "unet": {"channels": [32, 64], "cross_attention": [True, True]},
    "text": {"width": 32, "layers": 1, "heads": 2, "max_length": 16}, "autoencoder_steps": 1}
_SPECS: dict[str, dict[str, Any]] = {
    TESTBED_METHOD: TINY_TESTBED,
    CLASSIFIER_METHOD: {"attributes": {k: list(v) for k, v in TINY_WORLD.attributes.items()}, "width": 8,
                        "image_size": 16},
    "ticoe": {"model_spec": {"family": "t2i", "method": TESTBED_METHOD, **TINY_TESTBED},
              "prompts": ["a triangle", "a wedge", "a red pyramid"], "resample_every": 2},
    "esd": {"model_spec": {"family": "t2i", "method": TESTBED_METHOD, **TINY_TESTBED}, "prompts": ["a triangle"],
            "sampling_steps": 4},
    SET_METHOD: {"scales": 2, "steps": 2, "layers": 3, "hidden": 16, "embedding": 8, "warmup_epochs": 1},
}


def tiny_spec(method: str) -> dict[str, Any]:
    if method not in _SPECS:
        raise KeyError(f"no tiny example for {method!r}; text-to-image methods: {sorted(_SPECS)}")
    return {"family": "t2i", "method": method, **_SPECS[method]}


def example_dataset(model: Any, n: int = 16, seed: int = 0) -> Dataset:
    method = model.init_spec["method"]
    if method == SET_METHOD:
        generator = torch.Generator().manual_seed(seed)
        return FeatureRows(torch.rand(n, model.feature_size, generator=generator))
    if isinstance(model, TICoEEraser | ESDEraser):  # erasers train on reference images of the concept
        world = ShapesWorld(image_size=model.model.image_size, shapes=("triangle",))
        return LabelledImages(render_rows(world, sample_rows(world, n, seed)), {})
    rows = sample_rows(TINY_WORLD, n, seed)
    images = render_rows(TINY_WORLD, rows)
    if method == CLASSIFIER_METHOD:
        return LabelledImages(images, model.labels(rows))
    return LabelledImages(images, {}, model.tokenize([str(r["caption"]) for r in rows]))
