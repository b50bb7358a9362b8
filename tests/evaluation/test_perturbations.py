"""Test-time degradations: strength ordering, size preservation, determinism, name parsing."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from genguard.evaluation.perturbations import get_perturbation, list_perturbations


@pytest.fixture(scope="module")
def image() -> Image.Image:
    # Smooth gradients plus fine noise: JPEG and blur both have something to destroy.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    base = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.float32)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(diff**2)))


def _high_frequency_energy(img: Image.Image) -> float:
    gray = np.asarray(img.convert("L"), dtype=np.float64)
    return float(np.mean(np.diff(gray, axis=0) ** 2) + np.mean(np.diff(gray, axis=1) ** 2))


def test_clean_is_identity(image):
    assert get_perturbation("clean")(image) is image


def test_jpeg_quality_orders_damage(image):
    q95 = get_perturbation("jpeg_95")(image)
    q75 = get_perturbation("jpeg_75")(image)
    assert q95.size == image.size and q95.mode == "RGB"
    assert _psnr(image, q75) < _psnr(image, q95)


def test_blur_sigma_orders_smoothing(image):
    names = ("blur_0.5", "blur_1", "blur_2")
    hf = {name: _high_frequency_energy(get_perturbation(name)(image)) for name in names}
    assert hf["blur_2"] < hf["blur_1"] < hf["blur_0.5"] < _high_frequency_energy(image)


def test_resize_keeps_size_and_loses_detail(image):
    out = get_perturbation("resize_0.5")(image)
    assert out.size == image.size and out.mode == "RGB"
    assert _high_frequency_energy(out) < _high_frequency_energy(image)


def test_degradations_are_deterministic_and_picklable(image):
    for name in list_perturbations():
        fn = get_perturbation(name)
        assert np.array_equal(np.asarray(fn(image)), np.asarray(fn(image)))
        assert pickle.loads(pickle.dumps(fn)) == fn  # DataLoader workers receive them pickled


def test_non_rgb_input_is_converted(image):
    rgba = image.convert("RGBA")
    assert get_perturbation("jpeg_90")(rgba).mode == "RGB"


def test_canonical_names():
    assert get_perturbation("blur_1.0").name == "blur_1"
    assert get_perturbation("resize_.5").name == "resize_0.5"
    assert get_perturbation("JPEG_75").name == "jpeg_75"
    assert list_perturbations()[0] == "clean"


@pytest.mark.parametrize(
    "name", ["sharpen_2", "jpeg_0", "jpeg_101", "jpeg_7.5", "blur_0", "resize_1.5", "resize_0", ""]
)
def test_unknown_or_out_of_range_raises(name):
    with pytest.raises(ValueError, match="valid: clean"):
        get_perturbation(name)
