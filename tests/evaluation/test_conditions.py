"""Robustness conditions: closed-form outputs, the old pixel behaviour, registry, suites, name parsing."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy.ndimage import gaussian_filter

from genguard.evaluation import conditions
from genguard.evaluation.conditions import (
    CONDITION_KINDS,
    CONDITION_SUITES,
    get_condition,
    register_condition_kind,
    register_condition_suite,
    resolve_conditions,
    valid_forms,
)
from genguard.registry import Registry

AIGI_SUITE = ["clean", "jpeg_95", "jpeg_75", "blur_1", "blur_2", "resize_0.5"]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    # Smooth gradients plus fine noise: JPEG and blur both have something to destroy.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    base = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.float32)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray.astype(np.uint8)[..., None], 3, axis=-1), mode="RGB")


def _gray(img: Image.Image) -> np.ndarray:
    pixels = np.asarray(img, dtype=np.int64)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    return pixels[..., 0]


def _ramp(height: int = 16, width: int = 32, step: int = 8) -> np.ndarray:
    return step * np.mgrid[0:height, 0:width][1]


def _psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean(diff**2)))


# --- closed forms and the old pixel behaviour ------------------------------------------------------------


def test_clean_is_identity(image):
    assert get_condition("clean")(image) is image


@pytest.mark.parametrize("name", ["blur_2", "resize_0.5", "resize_0.3"])
def test_constant_image_stays_constant(name):
    out = get_condition(name)(_rgb(np.full((20, 30), 77)))
    assert out.size == (30, 20) and (_gray(out) == 77).all()


def test_blur_is_scipys_reflect_gaussian(image):
    out = np.asarray(get_condition("blur_1.5")(image))
    reference = gaussian_filter(np.asarray(image, dtype=np.float32), sigma=(1.5, 1.5, 0), mode="reflect")
    np.testing.assert_array_equal(out, np.clip(np.rint(reference), 0, 255).astype(np.uint8))


def test_blur_keeps_a_linear_ramp_away_from_the_border():
    # A symmetric kernel that sums to 1 maps a linear function to itself; scipy truncates the Gaussian
    # at 4 sigma = 8 px, so beyond 8 px from the left/right border the reflection is never seen.
    ramp = _ramp()
    out = _gray(get_condition("blur_2")(_rgb(ramp)))
    np.testing.assert_array_equal(out[:, 8:-8], ramp[:, 8:-8])
    assert (out[:, :2] != ramp[:, :2]).any()  # the border does see the reflection


def test_resize_averages_a_checkerboard_to_its_mean():
    # Bilinear (triangle) down-sampling by 2 weighs each output's four nearest columns/rows
    # 1/8, 3/8, 3/8, 1/8: for a 2x2-periodic checkerboard of 0 and 200 that is exactly 100 away
    # from the border, and enlarging a constant back gives the constant.
    y, x = np.mgrid[0:16, 0:24]
    board = np.where((x + y) % 2 == 0, 0, 200)
    out = _gray(get_condition("resize_0.5")(_rgb(board)))
    assert out.shape == (16, 24)
    assert (out[4:-4, 4:-4] == 100).all()


def test_resize_keeps_a_linear_ramp_away_from_the_border():
    # Down: output pixel i averages input pixels symmetric around 2i + 1 -> 16 i + 4 (a ramp);
    # up: linear interpolation of a ramp is the ramp again, 8 k.
    ramp = _ramp()
    out = _gray(get_condition("resize_0.5")(_rgb(ramp)))
    np.testing.assert_array_equal(out[:, 4:-4], ramp[:, 4:-4])


def test_resize_is_pils_bilinear_down_and_up(image):
    small = image.resize((32, 24), Image.Resampling.BILINEAR)
    reference = small.resize(image.size, Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(np.asarray(get_condition("resize_0.5")(image)), np.asarray(reference))


def test_jpeg_is_pils_encoder_with_pinned_subsampling(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75, subsampling=2)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(get_condition("jpeg_75")(image)), reference)
    assert _psnr(image, get_condition("jpeg_75")(image)) < _psnr(image, get_condition("jpeg_95")(image))


def test_conditions_are_deterministic_picklable_rgb(image):
    rgba = image.convert("RGBA")
    for name in AIGI_SUITE[1:]:
        condition = get_condition(name)
        out = condition(rgba)
        assert out.mode == "RGB" and out.size == image.size
        assert np.array_equal(np.asarray(out), np.asarray(condition(rgba)))
        assert pickle.loads(pickle.dumps(condition)) == condition  # DataLoader workers receive them pickled


# --- names, registry, suites ---------------------------------------------------------------------------


def test_canonical_names():
    assert get_condition("blur_1.0").name == "blur_1"
    assert get_condition("resize_.5").name == "resize_0.5"
    assert get_condition("JPEG_75").name == "jpeg_75"
    assert get_condition(" clean ").name == "clean"


@pytest.mark.parametrize(
    "name", ["sharpen_2", "jpeg_0", "jpeg_101", "jpeg_7.5", "blur_0", "blur_-1", "resize_1.5", "resize_0", "",
             "jpeg", "blur_x"]
)
def test_unknown_or_out_of_range_raises(name):
    with pytest.raises(ValueError, match=r"valid: clean \| .*blur_"):
        get_condition(name)


def test_builtin_kinds_are_registered():
    assert {"jpeg", "blur", "resize"} <= set(CONDITION_KINDS.names())
    for form in ("jpeg_<quality 1..100>", "blur_<sigma > 0 px>", "resize_<factor in (0, 1]>"):
        assert form in valid_forms()


@dataclass(frozen=True)
class Posterize:
    bits: int

    @property
    def name(self) -> str:
        return f"posterize_{self.bits}"

    def __call__(self, image: Image.Image) -> Image.Image:
        return ImageOps.posterize(image.convert("RGB"), self.bits)


def _posterize(parameter: str) -> Posterize:
    if not parameter.isdigit() or not 1 <= int(parameter) <= 8:
        raise ValueError("bits must be in 1..8")
    return Posterize(int(parameter))


@pytest.fixture
def private_kinds(monkeypatch):
    """A copy of the kind registry, so registering a test kind leaves the real one untouched."""
    kinds: Registry = Registry("condition kind")
    for name in CONDITION_KINDS.names():
        kinds.register(name)(CONDITION_KINDS.get(name))
    monkeypatch.setattr(conditions, "CONDITION_KINDS", kinds)
    monkeypatch.setattr(conditions, "_FORMS", dict(conditions._FORMS))
    return kinds


def test_a_new_kind_plugs_in_without_touching_the_parser(private_kinds, image):
    register_condition_kind("posterize", "posterize_<bits 1..8>")(_posterize)
    condition = get_condition("posterize_3")
    assert condition == Posterize(3) and condition.name == "posterize_3"
    assert (np.asarray(condition(image)) % 32 == 0).all()  # 3 bits kept: multiples of 2^5
    assert "posterize_<bits 1..8>" in valid_forms()
    assert resolve_conditions(["posterize_3", "jpeg_75"]) == ["clean", "posterize_3", "jpeg_75"]
    with pytest.raises(ValueError, match="bits must be in 1..8.*valid: clean"):
        get_condition("posterize_9")
    with pytest.raises(ValueError, match="prefix"):
        register_condition_kind("under_score", "x")


def test_suites_and_resolve_conditions():
    assert list(CONDITION_SUITES["aigi_robustness"]) == AIGI_SUITE
    assert resolve_conditions("aigi_robustness") == AIGI_SUITE
    # clean is added when absent and moved to the front; names are canonicalised.
    assert resolve_conditions(["blur_1.0", "jpeg_75"]) == ["clean", "blur_1", "jpeg_75"]
    assert resolve_conditions(["jpeg_75", "clean"]) == ["clean", "jpeg_75"]
    assert resolve_conditions([]) == ["clean"]


@pytest.mark.parametrize(("spec", "error", "match"), [
    (["blur_1", "blur_1.0"], ValueError, "more than once.*blur_1"),
    (["clean", "clean"], ValueError, "more than once"),
    (["jpeg_75", "sharpen_2"], ValueError, "unknown condition 'sharpen_2'"),
    ("no_such_suite", ValueError, "unknown condition suite"),
    ("jpeg_75", ValueError, r"give a list: \['jpeg_75'\]"),
    (7, TypeError, "suite name or a list"),
])
def test_resolve_conditions_errors(spec, error, match):
    with pytest.raises(error, match=match):
        resolve_conditions(spec)


def test_register_condition_suite_validates():
    try:
        register_condition_suite("test_faces", ["jpeg_50", "blur_3"])
        assert resolve_conditions("test_faces") == ["clean", "jpeg_50", "blur_3"]
        with pytest.raises(ValueError, match="registered already"):
            register_condition_suite("test_faces", ["clean"])
    finally:
        conditions._SUITES.pop("test_faces", None)
    with pytest.raises(ValueError, match="unknown condition"):
        register_condition_suite("test_bad", ["jpeg_75", "warp_2"])
    assert "test_bad" not in CONDITION_SUITES
    with pytest.raises(TypeError):
        register_condition_suite("test_str", "jpeg_75")


# --- plain downsampling and the GenImage suite -------------------------------------------------------------


def test_downsample_keeps_the_small_image_and_averages_a_checkerboard():
    """Bilinear x0.5 of a 2x2-periodic checkerboard samples between the squares: their mean, at half size."""
    board = np.indices((16, 24)).sum(axis=0) % 2 * 200
    out = get_condition("downsample_0.5")(_rgb(board))
    assert out.size == (12, 8)  # width, height: no enlarging back (unlike resize_0.5)
    assert np.abs(_gray(out)[1:-1, 1:-1].astype(int) - 100).max() <= 1  # the border pads by reflection
    assert get_condition("downsample_1").name == "downsample_1" and get_condition("downsample_1")(_rgb(board)).size == (24, 16)
    with pytest.raises(ValueError, match="downsample factor"):
        get_condition("downsample_2")


def test_genimage_suite_is_the_papers_degraded_test():
    assert resolve_conditions("genimage_robustness") == ["clean", "jpeg_65", "jpeg_30", "blur_3", "blur_5",
                                                         "downsample_0.5", "downsample_0.25"]


# --- DeeperForensics-1.0 perturbations ----------------------------------------------------------------------


def _noise_image(shape=(48, 50, 3), seed=0):
    return Image.fromarray((np.random.default_rng(seed).random(shape) * 255).astype(np.uint8))


def test_saturation_scales_chroma_towards_grey():
    image = _noise_image()
    assert np.abs(np.asarray(get_condition("saturation_1")(image)).astype(int) - np.asarray(image)).max() <= 2
    grey = np.asarray(get_condition("saturation_0")(image)).astype(int)
    assert (grey.max(axis=2) - grey.min(axis=2)).max() <= 2  # R = G = B up to rounding


def test_contrast_multiplies_and_truncates():
    image = _noise_image()
    expected = (np.asarray(image).astype(np.float32) * 0.6).astype(np.uint8)
    assert np.array_equal(np.asarray(get_condition("contrast_0.6")(image)), expected)


def test_blockwise_pastes_grey_blocks_at_image_seeded_places():
    image = Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8))
    out = np.asarray(get_condition("blockwise_3")(image))
    assert set(np.unique(out)) == {0, 128} and (out == 128).any()
    assert np.array_equal(out, np.asarray(get_condition("blockwise_3")(image)))  # same image, same blocks
    # at most 3 blocks of 8 x 8: the grey area is at most their union
    assert (out[..., 0] == 128).sum() <= 3 * 64
    other = np.asarray(get_condition("blockwise_3")(Image.fromarray(np.full((64, 64, 3), 1, np.uint8))))
    assert not np.array_equal(out == 128, other == 128)  # another image, other places


def test_colour_noise_has_the_stated_variance_and_is_reproducible():
    image = Image.fromarray(np.full((128, 128, 3), 120, np.uint8))
    out = np.asarray(get_condition("noise_0.005")(image)).astype(np.float64)
    assert np.array_equal(out, np.asarray(get_condition("noise_0.005")(image)))
    luma = 0.299 * out[..., 0] + 0.587 * out[..., 1] + 0.114 * out[..., 2]
    # Y noise of std sqrt(v) in studio range [16, 235] / 255: ~ sqrt(v) * 255 * 255 / 219 in pixel units
    expected = np.sqrt(0.005) * 255 * 255 / 219
    assert abs(luma.std() - expected) / expected < 0.15


def test_kernel_blur_is_a_gaussian_of_sigma_k_over_6_on_a_k_kernel():
    from scipy.ndimage import gaussian_filter

    image = _noise_image()
    pixels = np.asarray(image, dtype=np.float32)
    sigma = 13 / 6  # radius 6 pixels = the 13 x 13 kernel
    expected = np.clip(np.rint(gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="reflect", truncate=6 / sigma)),
                       0, 255)
    assert np.array_equal(np.asarray(get_condition("gblur_13")(image)), expected.astype(np.uint8))
    with pytest.raises(ValueError, match="odd"):
        get_condition("gblur_8")


def test_pixelate_and_h264_keep_the_size_and_degrade_more_at_higher_levels():
    image = _noise_image((47, 61, 3))  # odd sides: H.264's 4:2:0 needs padding
    assert get_condition("pixelate_4")(image).size == image.size
    assert (_gray(get_condition("pixelate_3")(_rgb(np.full((20, 30), 90)))) == 90).all()
    errors = []
    for crf in (30, 40):
        out = get_condition(f"h264_{crf}")(image)
        assert out.size == image.size and np.array_equal(np.asarray(out), np.asarray(get_condition(f"h264_{crf}")(image)))
        errors.append(np.abs(np.asarray(out).astype(int) - np.asarray(image)).mean())
    assert errors[1] > errors[0] > 0


def test_deeperforensics_suites():
    suite = resolve_conditions("deeperforensics")
    assert len(suite) == 1 + 7 * 3 and suite[0] == "clean"
    assert {"saturation_0.4", "saturation_0", "h264_40", "gblur_7", "pixelate_6"} <= set(suite)
    assert len(resolve_conditions("deeperforensics_full")) == 1 + 7 * 5
