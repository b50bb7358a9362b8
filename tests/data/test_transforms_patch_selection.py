"""Patch selection inside the preprocessing every model records: sizes, train-time randomness, eval determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genguard.data.images import ManifestImages, Preprocess

SELECT = {"patch_size": 8, "grid": 4}


def test_patch_selected_input_has_the_backbone_size_and_is_recorded():
    preprocess = Preprocess(image_size=32, patch_selection=SELECT)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert preprocess.to_uint8(image).shape == (32, 32, 3)
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    with pytest.raises(ValueError, match="grid \\* patch_size = 64"):
        Preprocess(image_size=64, patch_selection=SELECT)


def test_training_draws_patch_orders_evaluation_repeats_one(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    frame = pd.DataFrame({"path": [str(path)], "label": [1]})
    preprocess = Preprocess(image_size=32, patch_selection=SELECT)
    evaluation = ManifestImages(frame, preprocess)
    assert torch.equal(evaluation[0]["image"], evaluation[0]["image"])
    training = ManifestImages(frame, preprocess, train=True)
    torch.manual_seed(0)
    draws = {training[0]["image"].numpy().tobytes() for _ in range(5)}
    assert len(draws) > 1
    torch.manual_seed(0)
    assert training[0]["image"].numpy().tobytes() in draws  # seeded by the engine's torch RNG


def test_extras_travel_with_their_rows(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(path)
    frame = pd.DataFrame({"path": [str(path)] * 3, "label": [0, 1, 0]})
    text = torch.arange(6.0).view(3, 2)
    rows = ManifestImages(frame, Preprocess(image_size=64), extras={"text_features": text})
    assert torch.equal(rows[2]["text_features"], text[2])
    with pytest.raises(ValueError, match="text_features"):
        ManifestImages(frame, Preprocess(image_size=64), extras={"text_features": text[:2]})
