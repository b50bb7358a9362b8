"""UnivFD's training augmentation as a cached bank of copies (blur / JPEG / crop / flip)."""

import numpy as np
import pytest
import torch
from PIL import Image

from genguard.data.datasets import FeatureBank
from genguard.evaluation.conditions import GaussianBlur, JpegReencode
from genguard.families.aigi.augment import AugmentConfig, BankCopy, augment


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))


def _only(**kw):
    off = {"blur_prob": 0.0, "jpeg_prob": 0.0, "crop": 1.0, "flip_prob": 0.0}
    return AugmentConfig.from_dict({**off, **kw})


def test_each_step_of_the_recipe_is_the_operation_it_names(image):
    rng = lambda: np.random.default_rng(1)  # noqa: E731
    assert np.array_equal(np.asarray(augment(image, _only(), rng())), np.asarray(image))
    blurred = augment(image, _only(blur_prob=1.0, blur_sigma=[2.0, 2.0]), rng())
    assert np.array_equal(np.asarray(blurred), np.asarray(GaussianBlur(2.0)(image)))
    jpeg = augment(image, _only(jpeg_prob=1.0, jpeg_quality=[40, 40]), rng())
    assert np.array_equal(np.asarray(jpeg), np.asarray(JpegReencode(40)(image)))
    flipped = augment(image, _only(flip_prob=1.0), rng())
    assert np.array_equal(np.asarray(flipped), np.asarray(image)[:, ::-1])
    cropped = augment(image, _only(crop=0.5), rng())
    assert cropped.size == (20, 20)
    window = np.lib.stride_tricks.sliding_window_view(np.asarray(image), (20, 20, 3))
    assert any(np.array_equal(np.asarray(cropped), window[y, x, 0]) for y in range(21) for x in range(29))


def test_bank_copies_are_reproducible_and_differ_from_each_other(image):
    config = AugmentConfig.from_dict({"bank": 3})
    copies = [np.asarray(BankCopy(config, k)(image)) for k in range(3)]
    assert np.array_equal(copies[0], np.asarray(BankCopy(config, 0)(image)))  # a copy depends on image + k only
    assert not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(copies, copies[1:]))


def test_feature_bank_draws_one_of_each_rows_views():
    features = torch.arange(3 * 4 * 2, dtype=torch.float32).reshape(3, 4, 2)
    bank = FeatureBank(features, torch.tensor([0, 1, 0, 1]))
    torch.manual_seed(0)
    seen = {tuple(bank[1]["features"].tolist()) for _ in range(40)}
    assert seen == {tuple(features[k, 1].tolist()) for k in range(3)}
    with pytest.raises(ValueError, match="views, rows, dim"):
        FeatureBank(features[0], torch.tensor([0, 1, 0, 1]))


def test_bad_recipes_are_named():
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig.from_dict({"jpeg_quality": [90, 30]})
    with pytest.raises(ValueError, match="banks"):
        AugmentConfig.from_dict({"banks": 3})
