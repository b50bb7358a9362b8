"""Behaviour of the embedded default AIGI dataset (genguard.data.default_aigi) and its photo sources.

All builds use a small config (8 wheel photos, 32 px, a few dozen training steps) so the file runs in
seconds on 2 CPU cores; the full-size build is timed outside the test suite.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # diffusers imports huggingface_hub; never reach the hub

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genguard.families.aigi import embedded as default_aigi, photos
from genguard.families.aigi.embedded import (
    GENERATOR_FAMILIES,
    DefaultAigiConfig,
    build_default_aigi_dataset,
)
from genguard.data.manifest import SPLITS, sha256_file
from genguard.families.aigi.schema import AIGI_SCHEMA

SMALL = {
    "seed": 0,
    "image_size": 32,
    "crops_per_photo": 4,
    "crops_per_small_photo": 4,
    "train_patch_size": 16,
    "batch_size": 8,
    "vae_steps": 40,
    "upsampler_steps": 120,
    "diffusion_steps": 15,
    "sdedit_schedule_steps": 6,
    "sample_steps": 3,
}


def _build(out_dir: Path, **overrides) -> pd.DataFrame:
    return build_default_aigi_dataset(out_dir, {**SMALL, **overrides}, photo_root=None, show_progress=False)


def _photo_of(source: str) -> str:
    """'vae_recon<-skimage:astronaut#crop3' and 'diffusion_sample<-noise~…' → 'skimage:astronaut'."""
    origin = source.split("<-", 1)[-1].removeprefix("noise~")
    return origin.split("#crop", 1)[0]


def _relative(frame: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    out = frame.copy()
    out["path"] = [str(Path(p).relative_to(out_dir)) for p in out["path"]]
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out_dir = tmp_path_factory.mktemp("aigi") / "default_aigi"
    return out_dir, _build(out_dir)


# --------------------------------------------------------------------------------------------------
# Dataset structure
# --------------------------------------------------------------------------------------------------

def test_every_family_in_every_split_with_both_labels(built):
    _, manifest = built
    counts = manifest.groupby(["split", "generator", "label"]).size()
    for split in SPLITS:
        for family in GENERATOR_FAMILIES:
            n_real, n_fake = counts.get((split, family, 0), 0), counts.get((split, family, 1), 0)
            assert n_real > 0 and n_fake > 0, (split, family)
            assert n_real == n_fake, (split, family)  # one fake per real of the subset


def test_manifest_columns_files_and_layout(built):
    out_dir, manifest = built
    assert tuple(manifest.columns) == (*AIGI_SCHEMA.column_names, "origin")
    assert (out_dir / "manifest.parquet").is_file() and (out_dir / "build_info.json").is_file()
    on_disk = pd.read_parquet(out_dir / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, manifest)
    for row in manifest.itertuples():
        path = Path(row.path)
        assert path.parts[-4:-1] == (row.split, row.generator, "1_fake" if row.label else "0_real")
        assert path.suffix == ".png" and path.is_file()
        assert sha256_file(path) == row.sha256
        with Image.open(path) as image:  # every image stored the same way: RGB PNG of one size
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
        assert (row.width, row.height) == (32, 32)
        assert row.licence and row.licence != "nan"
    fakes = manifest[manifest.label == 1]
    assert fakes["source"].str.contains("<-", regex=False).all()
    reals = manifest[manifest.label == 0].set_index("source")
    for fake in fakes.itertuples():  # fakes inherit the licence of the real they come from
        origin = fake.source.split("<-", 1)[1].removeprefix("noise~")
        assert reals.loc[origin, "licence"] == fake.licence


def test_no_image_and_no_source_photo_in_two_splits(built):
    _, manifest = built
    assert manifest.groupby("sha256")["split"].nunique().max() == 1
    photo = manifest["source"].map(_photo_of)
    assert manifest.groupby(photo)["split"].nunique().max() == 1
    assert photo.nunique() == 8  # all wheel photos used


def test_build_info_records_config_counts_and_decreasing_losses(built):
    out_dir, manifest = built
    info = json.loads((out_dir / "build_info.json").read_text())
    assert info["config"]["seed"] == 0 and info["config"]["image_size"] == 32
    assert info["n_images"] == len(manifest)
    assert len(info["cache_key"]) == 64
    assert {p["source"] for p in info["photos"]} == {p.source for p in photos.wheel_photos()}
    assert sum(n for families in info["counts"].values() for labels in families.values()
               for n in labels.values()) == len(manifest)
    for model in ("vae_recon", "gan_upsampler"):
        losses = info["losses"][model]
        assert len(losses) == (SMALL["vae_steps"] if model == "vae_recon" else SMALL["upsampler_steps"])
        quarter = len(losses) // 4
        assert np.mean(losses[-quarter:]) < 0.8 * np.mean(losses[:quarter]), model
    assert "diffusion_unet" in info["losses"]


def test_vae_fakes_are_aligned_reconstructions(built):
    _, manifest = built

    def mean_psnr(family: str) -> float:
        subset = manifest[manifest.generator == family]
        reals = subset[subset.label == 0].set_index(subset[subset.label == 0]["path"].map(lambda p: Path(p).name))
        values = []
        for fake in subset[subset.label == 1].itertuples():
            real_path = reals.loc[Path(fake.path).name, "path"]  # the fake's real: same split, same name
            values.append(_psnr(_pixels(fake.path), _pixels(real_path)))
        return float(np.mean(values))

    aligned, unrelated = mean_psnr("vae_recon"), mean_psnr("diffusion_sample")
    assert aligned > unrelated + 3.0, (aligned, unrelated)
    assert mean_psnr("gan_upsampler") > unrelated + 3.0


# --------------------------------------------------------------------------------------------------
# Determinism, caching, atomicity
# --------------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_manifest(built, tmp_path):
    out_a, manifest_a = built
    out_b = tmp_path / "again"
    rng_before = torch.random.get_rng_state()
    manifest_b = _build(out_b)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    pd.testing.assert_frame_equal(_relative(manifest_a, out_a), _relative(manifest_b, out_b))


def test_different_seed_gives_different_fakes(built, tmp_path):
    _, manifest_a = built
    manifest_c = _build(tmp_path / "seed1", seed=1)
    fakes_a = set(manifest_a.loc[manifest_a.label == 1, "sha256"])
    fakes_c = set(manifest_c.loc[manifest_c.label == 1, "sha256"])
    assert not fakes_a & fakes_c


def test_second_call_returns_cached_manifest_without_rebuilding(built, monkeypatch):
    out_dir, manifest = built
    info_before = (out_dir / "build_info.json").read_bytes()

    def must_not_run(*args, **kwargs):
        raise AssertionError("cached build must not train anything")

    for name in ("train_vae", "train_upsampler", "train_diffusion_unet", "_crop_photos"):
        monkeypatch.setattr(default_aigi, name, must_not_run)
    started = time.perf_counter()
    cached = _build(out_dir)
    assert time.perf_counter() - started < 1.0
    pd.testing.assert_frame_equal(cached, manifest)
    assert (out_dir / "build_info.json").read_bytes() == info_before


def test_cached_manifest_follows_a_moved_dataset(built, tmp_path):
    out_dir, manifest = built
    moved = tmp_path / "moved"
    shutil.copytree(out_dir, moved)
    cached = _build(moved)
    assert all(Path(p).is_relative_to(moved) and Path(p).is_file() for p in cached["path"])
    pd.testing.assert_frame_equal(_relative(cached, moved), _relative(manifest, out_dir))


def test_interrupted_build_leaves_previous_build_intact(built, tmp_path, monkeypatch):
    source_dir, _ = built
    out_dir = tmp_path / "default_aigi"
    shutil.copytree(source_dir, out_dir)
    before = {p.relative_to(out_dir): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        raise RuntimeError("interrupted")

    # A changed seed misses the cache; the build then dies after the VAE family was generated.
    monkeypatch.setattr(default_aigi, "train_upsampler", crash)
    with pytest.raises(RuntimeError, match="interrupted"):
        _build(out_dir, seed=7)
    after = {p.relative_to(out_dir): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default_aigi"]  # no half-built sibling left


# --------------------------------------------------------------------------------------------------
# Config and photo sources
# --------------------------------------------------------------------------------------------------

def test_config_defaults_and_validation():
    config = DefaultAigiConfig.from_dict({})
    assert (config.seed, config.image_size, config.crops_per_photo, config.crops_per_small_photo) == (0, 64, 8, 4)
    assert (config.crop_side_min, config.crop_side_max) == (96, 224)
    assert config.split_fractions == {"train": 0.5, "val": 0.15, "test": 0.35}
    assert config.generators == GENERATOR_FAMILIES
    assert DefaultAigiConfig.from_dict({"generators": ["vae_recon"]}).generators == ("vae_recon",)
    with pytest.raises(ValueError, match="unknown"):
        DefaultAigiConfig.from_dict({"sead": 1})
    with pytest.raises(ValueError, match="generators"):
        DefaultAigiConfig.from_dict({"generators": ["stylegan"]})
    with pytest.raises(ValueError, match="split_fractions"):
        DefaultAigiConfig.from_dict({"split_fractions": {"train": 1.0}})


def test_wheel_photos_are_eight_colour_photos():
    found = photos.wheel_photos()
    assert [p.name for p in found] == ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
                                       "china", "flower", "grace_hopper"]
    for photo in found:
        rgb = photo.load()
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 300
        assert photo.licence


def test_debian_photos_reads_licences_and_downscales(tmp_path):
    assert photos.debian_photos(None) == [] and photos.debian_photos(tmp_path) == []
    backgrounds = tmp_path / "usr/share/backgrounds"
    (backgrounds / "mate/nature").mkdir(parents=True)
    (backgrounds / "mate/abstract").mkdir(parents=True)
    Image.new("RGB", (2048, 1024), (10, 200, 30)).save(backgrounds / "creek_by_Someone.jpg")
    Image.new("RGB", (1200, 900), (200, 10, 30)).save(backgrounds / "mate/nature/Leaf.jpg")
    Image.new("RGB", (100, 100)).save(backgrounds / "mate/abstract/Swirl.jpg")  # artwork: ignored
    docs = tmp_path / "usr/share/doc"
    (docs / "lomiri-wallpapers-16.04").mkdir(parents=True)
    (docs / "lomiri-wallpapers-16.04/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: 2018 Someone\nLicense: CC-BY-SA-3.0\n\n"
        "Files: 16.04/creek_by_Someone.jpg\nCopyright: Someone, 2018\nLicense: CC0-1.0\n\n"
        "Files: debian/*\nCopyright: 2022 Packager\nLicense: Expat\n")
    found = {p.source: p for p in photos.debian_photos(tmp_path)}
    assert set(found) == {"debian:lomiri-wallpapers-16.04:16.04/creek_by_Someone.jpg",
                          "debian:mate-backgrounds:nature/Leaf.jpg"}
    creek = found["debian:lomiri-wallpapers-16.04:16.04/creek_by_Someone.jpg"]
    assert (creek.licence, creek.attribution) == ("CC0-1.0", "Someone, 2018")
    assert creek.load().shape == (512, 1024, 3)
    leaf = found["debian:mate-backgrounds:nature/Leaf.jpg"]
    assert leaf.licence == "GPL-2+"  # no copyright file: the package's known licence
    assert leaf.load().shape == (768, 1024, 3)


def test_fetch_debian_photos_is_idempotent_and_never_fails_the_build(tmp_path, monkeypatch, caplog):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("must not call apt")

    monkeypatch.setattr(photos.subprocess, "run", no_subprocess)
    # Already unpacked: the marker short-circuits.
    done = tmp_path / "done"
    done.mkdir()
    (done / ".genguard_debian_photos.json").write_text(
        json.dumps({"packages": list(photos.DEBIAN_PHOTO_PACKAGES)}))
    assert photos.fetch_debian_photos(done) == done
    # No apt on the machine: a warning, no exception, nothing created.
    monkeypatch.setattr(photos.shutil, "which", lambda tool: None)
    missing = tmp_path / "missing"
    with caplog.at_level("WARNING"):
        assert photos.fetch_debian_photos(missing) == missing
    assert not missing.exists()
    assert "skipping the Debian photos" in caplog.text
