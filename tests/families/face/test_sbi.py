"""Self-Blended Images (genguard.families.face.sbi) on a real face: the astronaut portrait that ships with
scikit-image, landmarks from dlib with the known face box."""

from __future__ import annotations

import numpy as np
import pytest

from genguard.families.face.faces import find_face
from genguard.families.face.sbi import (
    SBIConfig,
    draw_sbi,
    feathered_mask,
    forehead_points,
    self_blend,
    self_blend_parts,
)

ASTRONAUT_FACE = (175, 76, 265, 166)


@pytest.fixture(scope="module")
def face() -> tuple[np.ndarray, np.ndarray]:
    """A 96x96 crop around the astronaut's face and its 68 landmarks in crop pixels."""
    from PIL import Image
    from skimage import data

    image = data.astronaut()
    found = find_face(image, ASTRONAUT_FACE)
    top, left, side = 56, 155, 132
    crop = Image.fromarray(image[top:top + side, left:left + side]).resize((96, 96), Image.BICUBIC)
    crop = np.asarray(crop)
    scale = 96 / side
    return crop, ((found.landmarks - [left, top] + 0.5) * scale - 0.5).astype(np.float32)


@pytest.mark.parametrize("seed", range(8))
def test_fake_equals_target_outside_the_mask_and_differs_inside(face, seed):
    image, landmarks = face
    blend = self_blend_parts(image, landmarks, np.random.default_rng(seed))
    outside, inside = blend.mask == 0, blend.mask > 0.5 * blend.mask.max()
    assert outside.mean() > 0.15 and inside.mean() > 0.1
    assert np.array_equal(blend.fake[outside], blend.target[outside])
    changed = np.abs(blend.fake.astype(int) - blend.target.astype(int)).max(axis=-1)
    assert (changed[inside] > 0).mean() > 0.5
    assert blend.fake.dtype == np.uint8 and blend.fake.shape == image.shape


def test_untransformed_target_is_the_input_so_the_fake_differs_from_it_only_inside_the_mask(face):
    image, landmarks = face
    config = SBIConfig(target_transform_probability=0.0)
    for seed in range(6):
        fake, mask = self_blend(image, landmarks, np.random.default_rng(seed), config)
        assert np.array_equal(fake[mask == 0], image[mask == 0])
        assert (fake[mask > 0.5 * mask.max()] != image[mask > 0.5 * mask.max()]).any()
        # The corners are far from the face: never blended.
        assert mask[:4, :4].max() == mask[-4:, -4:].max() == 0


def test_mask_is_a_feathered_hull_scaled_by_a_blend_ratio(face):
    image, landmarks = face
    config = SBIConfig()
    ratios = set()
    for seed in range(12):
        _, mask = self_blend(image, landmarks, np.random.default_rng(seed), config)
        ratio = float(mask.max())
        ratios.add(round(ratio, 6))
        soft = (mask > 0.02 * ratio) & (mask < 0.98 * ratio)
        assert soft.sum() > 20                        # blurred edges, not a hard cut
        assert mask.min() == 0 and mask.dtype == np.float32
    assert ratios <= {round(r, 6) for r in config.blend_ratios} and len(ratios) >= 2


def test_feathered_mask_has_exact_zeros_beyond_the_blur_and_peaks_at_one():
    hard = np.zeros((64, 64))
    hard[20:44, 20:44] = 1
    mask = feathered_mask(hard, erode_sigma=1.0, feather_sigma=2.0)
    assert mask.max() == pytest.approx(1.0)
    assert mask[:8].max() == 0 and mask[:, 56:].max() == 0
    assert mask[32, 32] == pytest.approx(1.0, abs=1e-3)


def test_same_seed_same_fake_and_other_seeds_differ(face):
    image, landmarks = face
    first = self_blend(image, landmarks, np.random.default_rng(3))
    again = self_blend(image, landmarks, np.random.default_rng(3))
    other = self_blend(image, landmarks, np.random.default_rng(4))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_frame_rng_moves_only_the_mask_boundary(face):
    """A fake video: the same video generator seed per frame, a different frame generator."""
    image, landmarks = face
    config = SBIConfig(target_transform_probability=0.0)
    masks = [self_blend(image, landmarks, np.random.default_rng(11), config,
                        frame_rng=np.random.default_rng(100 + frame))[1] for frame in range(3)]
    assert not np.array_equal(masks[0], masks[1])
    for mask in masks[1:]:
        overlap = np.minimum(mask, masks[0]).sum() / np.maximum(mask, masks[0]).sum()
        assert overlap > 0.85                         # the same forgery, a slightly different boundary
        assert mask.max() == pytest.approx(masks[0].max())   # the same drawn ratio


def test_draws_follow_the_config(face):
    config = SBIConfig(target_transform_probability=1.0, rgb_shift_probability=0.0, sharpen_probability=0.0,
                       downscale_factors=(2,), blend_ratios=(0.5,), forehead_probability=0.0)
    draw = draw_sbi(np.random.default_rng(0), config)
    assert draw.transform_target and draw.rgb_shift == (0.0, 0.0, 0.0)
    assert draw.downscale_factor == 2 and draw.blend_ratio == 0.5 and not draw.forehead
    assert abs(draw.translate[0]) <= 0.03 and abs(draw.translate[1]) <= 0.015
    assert 0.95 <= draw.scale <= 1 / 0.95


def test_forehead_points_arc_above_the_brows(face):
    _, landmarks = face
    points = forehead_points(landmarks, height=0.2)
    assert points.shape == (13, 2)
    assert points[6, 1] < landmarks[17:27, 1].min() - 2     # the arc's top is above the brows
    ends = sorted(map(tuple, np.round(points[[0, -1]], 6)))
    assert ends == sorted(map(tuple, np.round(landmarks[[0, 16]].astype(np.float64), 6)))   # jaw to jaw


def test_config_validation_and_input_checks(face):
    image, landmarks = face
    assert SBIConfig.from_dict({"blend_ratios": [0.5, 1.0]}).blend_ratios == (0.5, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        SBIConfig.from_dict({"blend_ratio": [0.5]})
    with pytest.raises(ValueError, match="probability"):
        SBIConfig(target_transform_probability=1.5)
    with pytest.raises(ValueError, match="uint8"):
        self_blend(image.astype(np.float32), landmarks, np.random.default_rng(0))
