"""Held-out forgeries (genguard.families.face.forgeries): region swap and generator reconstruction, on
real faces that ship in packages (the astronaut and Grace Hopper portraits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genguard.families.face.faces import find_face
from genguard.families.face.forgeries import (
    FaceVAEConfig,
    generator_reconstruction,
    landmark_blend_mask,
    region_swap,
    similarity_transform,
    train_face_vae,
)
from genguard.families.face.sbi import apply_affine


def _crop(image: np.ndarray, landmarks: np.ndarray, top: int, left: int, side: int, size: int = 96):
    from PIL import Image

    pixels = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(pixels)
    return pixels, ((landmarks - [left, top] + 0.5) * size / side - 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    image = data.astronaut()
    return _crop(image, find_face(image, (175, 76, 265, 166)).landmarks, 56, 155, 132)


@pytest.fixture(scope="module")
def hopper():
    import matplotlib.cbook
    from PIL import Image

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as handle:
        image = np.asarray(handle.convert("RGB"))
    found = find_face(image)
    return _crop(image, found.landmarks, 100, 150, 260)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --------------------------------------------------------------------------------------------------
# Region swap
# --------------------------------------------------------------------------------------------------

def test_similarity_transform_recovers_a_known_move():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (51, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ (scale * rotation).T + shift
    matrix = similarity_transform(points, moved)
    assert np.allclose(apply_affine(matrix, points), moved, atol=1e-8)
    assert np.allclose(matrix[:, :2], scale * rotation, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_region_swap_changes_only_inside_the_mask(astronaut, hopper, seed):
    (target, target_points), (donor, donor_points) = astronaut, hopper
    fake, mask = region_swap(target, target_points, donor, donor_points, np.random.default_rng(seed))
    assert fake.shape == target.shape and fake.dtype == np.uint8
    outside, inside = mask == 0, mask > 0.9
    assert outside.mean() > 0.2 and inside.mean() > 0.15
    assert np.array_equal(fake[outside], target[outside])
    assert (np.abs(fake.astype(int) - target.astype(int)).max(axis=-1)[inside] > 0).mean() > 0.8


def test_region_swap_carries_the_donors_content(astronaut):
    """An inverted copy of the target as donor: inside the mask the fake follows the donor's pattern
    (anti-correlated with the target), outside it is the target."""
    target, points = astronaut
    donor = 255 - target
    fake, mask = region_swap(target, points, donor, points, np.random.default_rng(0))
    inside = mask > 0.95
    assert _correlation(_luma(target)[inside], _luma(donor)[inside]) < -0.99
    assert _correlation(_luma(fake)[inside], _luma(donor)[inside]) > 0.8
    assert _correlation(_luma(fake)[inside], _luma(target)[inside]) < -0.8
    # Colour transfer: the pasted face has about the target's brightness, not the inverted donor's.
    target_mean, donor_mean = _luma(target)[inside].mean(), _luma(donor)[inside].mean()
    assert abs(_luma(fake)[inside].mean() - target_mean) < abs(donor_mean - target_mean) / 4


def test_region_swap_aligns_a_shifted_donor(astronaut):
    """The target shifted by (7, -4) pixels as donor: aligned back, the swap nearly reproduces the target."""
    target, points = astronaut
    donor = np.roll(target, shift=(-4, 7), axis=(0, 1))
    fake, mask = region_swap(target, points, donor, points + [7, -4], np.random.default_rng(0))
    inside = mask > 0.5
    error = np.abs(fake.astype(float) - target.astype(float))[inside].mean()
    unaligned = np.abs(donor.astype(float) - target.astype(float))[inside].mean()
    assert error < 3 and unaligned > 4 * error


def test_region_swap_is_deterministic_per_generator(astronaut, hopper):
    (target, target_points), (donor, donor_points) = astronaut, hopper
    first = region_swap(target, target_points, donor, donor_points, np.random.default_rng(5))
    again = region_swap(target, target_points, donor, donor_points, np.random.default_rng(5))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


# --------------------------------------------------------------------------------------------------
# Generator reconstruction
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_vae(astronaut, hopper):
    faces = np.stack([face[rows, cols] for face in (astronaut[0], hopper[0])
                      for rows, cols in ((slice(0, 64), slice(0, 64)), (slice(32, 96), slice(32, 96)))])
    config = FaceVAEConfig(steps=60, patch_size=16, batch_size=8)
    before = torch.random.get_rng_state()
    vae, losses = train_face_vae(faces, config, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)   # the caller's RNG is left alone
    return vae, losses, faces, config


def test_face_vae_trains_in_the_training_loop(trained_vae):
    _, losses, faces, config = trained_vae
    assert len(losses) == config.steps
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    short = FaceVAEConfig(steps=5, patch_size=16, batch_size=8)
    first, again = (train_face_vae(faces, short, seed=0)[1] for _ in range(2))
    assert first == again                                      # deterministic from the seed


@pytest.mark.parametrize("seed", range(3))
def test_generator_reconstruction_differs_from_the_input_only_inside_the_mask(trained_vae, astronaut, seed):
    vae = trained_vae[0]
    image, points = astronaut
    mask = landmark_blend_mask(points, image.shape[:2], np.random.default_rng(seed))
    fake = generator_reconstruction(image, mask, vae)
    assert fake.shape == image.shape and fake.dtype == np.uint8
    outside, inside = mask == 0, mask > 0.9
    assert outside.mean() > 0.2 and inside.mean() > 0.15
    assert np.array_equal(fake[outside], image[outside])
    assert (np.abs(fake.astype(int) - image.astype(int)).max(axis=-1)[inside] > 0).mean() > 0.5
    # Colour matching keeps the face's colour statistics close to the input's.
    assert np.abs(fake[inside].mean(axis=0) - image[inside].mean(axis=0)).max() < 6


def test_generator_reconstruction_batches_like_single_images(trained_vae, astronaut, hopper):
    vae = trained_vae[0]
    images = np.stack([astronaut[0], hopper[0]])
    masks = np.stack([landmark_blend_mask(points, (96, 96), np.random.default_rng(0))
                      for points in (astronaut[1], hopper[1])])
    batch = generator_reconstruction(images, masks, vae, batch_size=1)
    assert np.array_equal(batch[0], generator_reconstruction(images[0], masks[0], vae))
    with pytest.raises(ValueError, match="mask shape"):
        generator_reconstruction(images, masks[:1], vae)
