"""Spectral-entropy Patch Selection (NS-Net / DGS-Net, spec §1.3)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genguard.data.patch_selection import (
    PatchSelection,
    image_patches,
    select_patch_indices,
    spectral_entropy,
)

P = 8
FLAT = [0, 5, 10, 15]  # 4 = n_low for grid 3
NOISE = [2, 7, 8, 13, 14]  # 5 = n_high for grid 3
MID = [1, 3, 4, 6, 9, 11, 12]


def _constructed_image() -> np.ndarray:
    """4x4 patches of 8 px (+ a remainder that must be cropped): flat, white noise, smooth mid ones."""
    rng = np.random.default_rng(0)
    img = np.zeros((4 * P + 3, 4 * P + 5, 3), dtype=np.uint8)
    img[4 * P :, :] = 255
    img[:, 4 * P :] = 255
    ramp = np.linspace(60, 190, P)
    for k in range(16):
        r, c = divmod(k, 4)
        cell = img[r * P : (r + 1) * P, c * P : (c + 1) * P]
        if k in FLAT:
            cell[:] = (20 + 40 * FLAT.index(k), 200 - 30 * FLAT.index(k), 90)  # distinct colours
        elif k in NOISE:
            cell[:] = rng.integers(0, 256, (P, P, 3))
        elif k % 2:
            cell[:] = ramp[None, :, None] + 5 * k  # horizontal gradient
        else:
            y = np.arange(P)[:, None, None]
            cell[:] = 128 + 10 * np.sin(2 * np.pi * y / P + k)  # low-amplitude sine
    return img


def _cells(mosaic: np.ndarray, p: int) -> list[np.ndarray]:
    g = mosaic.shape[0] // p
    return [mosaic[r * p : (r + 1) * p, c * p : (c + 1) * p] for r in range(g) for c in range(g)]


def _multiset(mosaic: np.ndarray, p: int = 16) -> list[bytes]:
    return sorted(cell.tobytes() for cell in _cells(mosaic, p))


def _match(cell: np.ndarray, patches: np.ndarray) -> int:
    hits = [i for i, patch in enumerate(patches) if np.array_equal(cell, patch)]
    assert len(hits) == 1, f"cell matches input patches {hits}"
    return hits[0]


def test_selects_exactly_flat_and_noise_patches():
    img = _constructed_image()
    patches = image_patches(img, P)
    assert patches.shape == (16, P, P, 3)
    ent = spectral_entropy(patches)
    assert ent[FLAT].max() < 1e-6 < ent[MID].min() and ent[MID].max() < ent[NOISE].min()

    idx = select_patch_indices(ent, 9)
    low, high = idx[:4], idx[4:]
    assert set(low.tolist()) == set(FLAT) and set(high.tolist()) == set(NOISE)
    assert np.all(np.diff(ent[low]) >= 0) and np.all(np.diff(ent[high]) <= 0)

    for shuffle in (True, False):
        mosaic = PatchSelection(patch_size=P, grid=3, shuffle=shuffle)(img)
        used = [_match(cell, patches) for cell in _cells(mosaic, P)]
        assert sorted(used) == sorted(FLAT + NOISE)
        assert not set(used) & set(MID)
        if not shuffle:
            assert used == idx.tolist()  # low (ascending) then high (descending), unshuffled


def test_spectral_entropy_flat_impulse_noise():
    p = 16
    flat = np.full((1, p, p, 3), 77, dtype=np.uint8)
    impulse = np.zeros((1, p, p, 3), dtype=np.uint8)
    impulse[0, 3, 5] = 255  # a delta has a perfectly flat power spectrum: the maximum entropy
    noise = np.random.default_rng(0).integers(0, 256, (1, p, p, 3), dtype=np.uint8)
    # Sparse spikes: mean^2 << variance, so the DC bin no longer dominates, i.e. near-white spectrum.
    spikes = (np.random.default_rng(1).random((1, p, p, 1)) < 0.05).repeat(3, -1).astype(np.uint8) * 255
    ent = spectral_entropy(np.concatenate([flat, impulse, noise, spikes]))
    assert ent.shape == (4,) and ent.dtype == np.float64
    assert abs(ent[0]) < 1e-6
    assert ent[1] == pytest.approx(np.log2(p * p), abs=1e-6)
    assert ent[3] > 0.8 * np.log2(p * p)
    # Uniform uint8 noise keeps most power at DC: the gray mean^2 is ~7x the gray variance (three
    # independent channels average out), so its entropy is only ~0.2*log2(P*P), yet far above flat.
    assert 0.15 * np.log2(p * p) < ent[2] < 0.3 * np.log2(p * p)


def test_spectral_entropy_matches_loop_reference():
    patches = np.random.default_rng(3).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    patches[1] = patches[1] // 16  # vary the spectra
    patches[2, :, :6] = 0
    ref = []
    for patch in patches:
        gray = (0.299 * patch[..., 0] + 0.587 * patch[..., 1] + 0.114 * patch[..., 2]) / 255.0
        power = np.abs(np.fft.fftshift(np.fft.fft2(gray))) ** 2
        q = power / (power.sum() + 1e-12)
        ref.append(-np.sum(q * np.log2(q + 1e-12)))
    np.testing.assert_allclose(spectral_entropy(patches), ref, rtol=1e-10, atol=1e-12)


def test_output_shape_and_remainder_crop():
    rng = np.random.default_rng(0)
    img = np.full((70, 67, 3), 255, dtype=np.uint8)
    img[:64, :64] = rng.integers(0, 200, (64, 64, 3))  # the remainder is the only place with 255
    patches = image_patches(img, 16)
    assert patches.shape == (16, 16, 16, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(patches[6], img[16:32, 32:48])  # row 1, column 2
    ps = PatchSelection(patch_size=16, grid=3)
    assert (ps.output_size, ps.n_patches) == (48, 9)
    out = ps(img)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.max() < 255
    assert not np.shares_memory(out, img)


def test_determinism_seed_and_rng():
    img = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    img[:32] //= 8  # give the rows different entropies
    ps = PatchSelection(patch_size=16, grid=3)
    a, b = ps(img), ps(img.copy())
    np.testing.assert_array_equal(a, b)
    c = PatchSelection(patch_size=16, grid=3, seed=7)(img)
    assert not np.array_equal(a, c)
    assert _multiset(a) == _multiset(c)
    d = ps(img, rng=np.random.default_rng(1))
    e = ps(img, rng=np.random.default_rng(2))
    assert not np.array_equal(d, e) and _multiset(d) == _multiset(a)


def test_small_image_repeat_fills_every_cell():
    img = np.random.default_rng(0).integers(1, 256, (20, 20, 3), dtype=np.uint8)
    padded = np.zeros((32, 32, 3), dtype=np.uint8)
    padded[:20, :20] = img
    out = PatchSelection(patch_size=32, grid=2)(img)
    assert out.shape == (64, 64, 3)
    for cell in _cells(out, 32):
        np.testing.assert_array_equal(cell, padded)


def test_small_image_black_leaves_cells_zero():
    img = np.random.default_rng(0).integers(1, 256, (20, 20, 3), dtype=np.uint8)
    out = PatchSelection(patch_size=32, grid=2, small_image_policy="black")(img)
    cells = _cells(out, 32)
    assert all(np.array_equal(cell[:20, :20], img) for cell in cells[:2])  # 1 low + 1 high copy
    assert all(not cell.any() for cell in cells[2:])


def test_select_indices_with_too_few_patches():
    ent = np.array([0.3, 0.1, 0.2])
    assert select_patch_indices(ent, 9).tolist() == [1, 2, 0, 1, 0, 2, 1, 0, 2]
    assert select_patch_indices(ent, 9, "black").tolist() == [1, 2, 0, 0, 2, 1]
    ties = np.tile([0.0, 1.0], 50)  # long enough that an unstable sort would reorder the ties
    assert select_patch_indices(ties, 8).tolist() == [0, 2, 4, 6, 99, 97, 95, 93]
    # A 128x128 image gives 16 patches for 49 cells: "repeat" leaves no cell black.
    img = np.random.default_rng(2).integers(1, 256, (128, 128, 3), dtype=np.uint8)
    out = PatchSelection()(img)
    assert out.shape == (224, 224, 3) and all(cell.any() for cell in _cells(out, 32))
    out_black = PatchSelection(small_image_policy="black")(img)
    assert sum(not cell.any() for cell in _cells(out_black, 32)) == 49 - 32


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((40, 40), dtype=np.uint8),
        np.zeros((40, 40, 4), dtype=np.uint8),
        np.zeros((40, 40, 3), dtype=np.float32),
    ],
)
def test_bad_input_raises(bad):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        PatchSelection(patch_size=8, grid=2)(bad)


def test_config_validation_and_round_trip():
    for kwargs in ({"patch_size": 0}, {"grid": 0}, {"small_image_policy": "pad"}, {"seed": -1}):
        with pytest.raises(ValueError):
            PatchSelection(**kwargs)
    ps = PatchSelection(patch_size=16, grid=5, shuffle=False, seed=3, small_image_policy="black")
    cfg = json.loads(json.dumps(ps.to_dict()))
    assert PatchSelection.from_dict(cfg) == ps
    assert PatchSelection.from_dict(None) is None and PatchSelection.from_dict({}) is None
    with pytest.raises(ValueError, match="n_tiles"):
        PatchSelection.from_dict({"grid": 3, "n_tiles": 9})
