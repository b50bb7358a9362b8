"""Lightweight forensic experts: REVEAL-Bench's evidence views (arXiv 2511.23158, spec §1.2).

REVEAL annotates every image with eight specialised experts, one "view" each, whose structured evidence a
chain-of-evidence writer consolidates. Six views are implemented here as plain numpy analysers (the CPU
config of spec §1.2): ``spectrum`` (the released ``fuliye.py`` view), ``noise_residual`` (the released
``SRM.py`` view), ``local_artifacts``, ``spatial_consistency``, ``texture_frequency`` and
``highpass_semantic``; :class:`DetectorExpert` wraps any trained AIGI detector. Each expert returns a raw
:class:`ExpertReading`; a per-expert :class:`Calibration` fitted on the train split turns its statistic into
P(fake), and :func:`evidence_for` into the :class:`ExpertEvidence` record the CoE writer and rewards consume.
Readings are cached per file content, so a rerun computes only images it has not seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage, stats

from genguard.data.manifest import sha256_file
from genguard.io.atomic import write_bytes_atomic, write_json_atomic
from genguard.progress import progress
from genguard.registry import Registry

DEFAULT_EXPERTS = ("spectrum", "noise_residual", "local_artifacts", "spatial_consistency",
                   "texture_frequency", "highpass_semantic")
VERDICTS = ("real", "fake", "uncertain")
# 2-D maps rendered with a perceptual colormap (the released spectrum view uses viridis); others stay grey/RGB.
COLORMAPPED_VIEWS = frozenset({"spectrum", "artifact_map", "consistency_map", "texture_map"})


@dataclass
class ExpertReading:
    """Raw output of one expert on one image (before calibration)."""
    statistic: float                     # scalar anomaly statistic; calibration learns its direction
    measurements: dict[str, float]       # named raw statistics, rounded to 4 decimals
    maps: dict[str, np.ndarray] = field(default_factory=dict)   # uint8 HxW / HxWx3 views
    regions: list[list[float]] = field(default_factory=list)    # [x1, y1, x2, y2, score]
    finding: str = ""                    # integer-only phrase for the evidence sentence
    version: str = ""                    # the expert version that produced it (set by read_experts)


class Expert(Protocol):
    name: str
    version: str

    def read(self, image: Image.Image) -> ExpertReading: ...


EXPERTS: Registry[Expert] = Registry("forensic expert")


# ------------------------------------------------------------------------------------------------ helpers
def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _r4(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in values.items()}


def _pct(x: float) -> int:
    return round(100 * float(x))


def _share(x: float) -> str:
    """A fraction as an integer percentage; a tiny non-zero share is "under 1%" rather than a bare "0%"."""
    return "under 1%" if 0 < x < 0.005 else f"{_pct(x)}%"


def _times(x: float) -> str:
    """A ratio as "N times" (integer), or as a percentage of the reference when it is below 2."""
    return f"{round(x)} times" if x >= 1.95 else f"{_pct(x)}% of"


def _patches(a: np.ndarray, patch: int) -> np.ndarray:
    """Non-overlapping patch x patch tiles of a 2-D array as (rows, cols, patch, patch); the remainder is cut."""
    p = max(2, min(patch, a.shape[0], a.shape[1]))
    ny, nx = a.shape[0] // p, a.shape[1] // p
    return a[:ny * p, :nx * p].reshape(ny, p, nx, p).swapaxes(1, 2)


def _grid_map(grid: np.ndarray, patch: int, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A per-patch grid stretched to 0..255 and blown up to pixel size (the artifact heat map)."""
    lo = float(grid.min()) if lo is None else lo
    hi = float(grid.max()) if hi is None else hi
    scaled = np.clip((grid - lo) / (hi - lo + 1e-12), 0, 1) * 255
    return np.kron(scaled, np.ones((patch, patch))).astype(np.uint8)


def _top_boxes(grid: np.ndarray, patch: int, k: int, mask: np.ndarray | None = None) -> list[list[float]]:
    order = np.argsort(grid, axis=None)[::-1]
    top = float(grid.max()) or 1.0
    boxes = []
    for flat in order:
        r, c = divmod(int(flat), grid.shape[1])
        if mask is not None and not mask[r, c]:
            continue
        boxes.append([c * patch, r * patch, (c + 1) * patch, (r + 1) * patch, round(float(grid[r, c]) / top, 4)])
        if len(boxes) == k:
            break
    return boxes


# The 8 first-order SRM kernels of the released SRM.py: -1 at the centre of a 5x5 kernel and +1 at one of
# the 8 neighbours, in the order N, NE, E, SE, S, SW, W, NW (offsets dy, dx).
SRM_NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def srm_kernels() -> np.ndarray:
    kernels = np.zeros((8, 5, 5), dtype=np.float32)
    for i, (dy, dx) in enumerate(SRM_NEIGHBOURS):
        kernels[i, 2, 2], kernels[i, 2 + dy, 2 + dx] = -1.0, 1.0
    return kernels


def srm_residual(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signed residual = sum of the 8 responses, the released uint8 view), per channel.

    Each first-order kernel is a shifted difference, so it is computed by slicing, not a 5x5 convolution.
    The released view runs ``cv2.filter2D`` with the uint8 depth kept: every response saturates to [0, 255]
    before the 8 are summed and clipped again, which this reproduces; statistics use the signed residual.
    Borders mirror without repeating the edge pixel (OpenCV's BORDER_REFLECT_101 = numpy "reflect").
    """
    h, w = rgb.shape[:2]
    pad = np.pad(rgb, ((2, 2), (2, 2), (0, 0)), mode="reflect")
    signed = np.zeros_like(rgb)
    view = np.zeros_like(rgb)
    for dy, dx in SRM_NEIGHBOURS:
        response = pad[2 + dy:2 + dy + h, 2 + dx:2 + dx + w] - rgb
        signed += response
        view += np.clip(response, 0, 255)
    return signed, np.clip(view, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- experts
class _NumpyExpert:
    """Shared naming/versioning: the version changes with the options, so a cache never mixes settings."""
    name = "expert"
    base_version = "1"

    def __init__(self, **options: Any) -> None:
        self.options = options
        tag = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8] if options else ""
        self.version = f"{self.base_version}-{tag}" if tag else self.base_version

    def read(self, image: Image.Image) -> ExpertReading:
        return self.analyse(_rgb(image))

    def analyse(self, rgb: np.ndarray) -> ExpertReading:
        raise NotImplementedError


# Up-sampling by 2 or 4 leaves spectral peaks at 1/2 and 1/4 of the sampling rate (checkerboard artifacts).
_PEAK_FREQUENCIES = ((0.5, 0.0), (0.0, 0.5), (0.5, 0.5), (0.25, 0.0), (0.0, 0.25), (0.25, 0.25),
                     (0.25, -0.25), (0.5, 0.25), (0.25, 0.5))


class SpectrumExpert(_NumpyExpert):
    """Frequency-domain anomalies: the released ``fuliye.py`` log-magnitude view plus spectrum statistics."""
    name = "spectrum"

    def analyse(self, rgb: np.ndarray) -> ExpertReading:
        g = _gray(rgb)
        view = np.clip(20 * np.log(np.abs(np.fft.fftshift(np.fft.fft2(g))) + 1), 0, 255).astype(np.uint8)
        h, w = g.shape
        # Statistics use a Hann-windowed, mean-free power spectrum: without the window the image border
        # leaks a bright cross through every frequency and hides the peaks.
        power = np.abs(np.fft.fft2((g - g.mean()) * np.outer(np.hanning(h), np.hanning(w)))) ** 2
        fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
        radius = np.sqrt(fx ** 2 + fy ** 2)
        total = float(power.sum() - power[0, 0]) + 1e-12
        hf_ratio = float(power[radius >= 0.25].sum()) / total
        nyquist_ratio = float(power[np.maximum(np.abs(fx), np.abs(fy)) >= 0.45].sum()) / total
        peak = self._peak_ratio(power)
        bins = np.minimum((radius * 64).astype(int), 32)
        profile = np.bincount(bins.ravel(), power.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
        f = (np.arange(1, 32) + 0.5) / 64
        slope = float(np.polyfit(np.log(f), np.log(profile[1:32] + 1e-12), 1)[0])
        statistic = math.log10(peak)
        finding = (f"the strongest periodic peak is {_times(peak)} the surrounding spectrum and "
                   f"high frequencies carry {_share(hf_ratio)} of the energy")
        return ExpertReading(statistic, _r4({"periodic_peak_ratio": peak, "hf_energy_ratio": hf_ratio,
                                             "nyquist_energy_ratio": nyquist_ratio, "spectral_slope": slope}),
                             {"spectrum": view}, [], finding)

    @staticmethod
    def _peak_ratio(power: np.ndarray) -> float:
        """Largest ratio of a candidate peak (3x3 max) to the median of its 11x11 surround (spectrum wraps)."""
        h, w = power.shape
        best = 1.0
        for fy, fx in _PEAK_FREQUENCIES:
            cy, cx = round(fy * h) % h, round(fx * w) % w
            block = power[np.ix_(np.arange(cy - 5, cy + 6) % h, np.arange(cx - 5, cx + 6) % w)]
            ring = np.ones((11, 11), bool)
            ring[4:7, 4:7] = False
            best = max(best, float(block[4:7, 4:7].max()) / (float(np.median(block[ring])) + 1e-12))
        return best


class NoiseResidualExpert(_NumpyExpert):
    """Pixel-level noise: the released ``SRM.py`` first-order residual; generated images lack sensor noise."""
    name = "noise_residual"

    def analyse(self, rgb: np.ndarray) -> ExpertReading:
        signed, view = srm_residual(rgb)
        gray_res = _gray(signed) / 8            # per-neighbour mean difference, in grey levels
        energy = float(np.mean(np.abs(gray_res)))
        kurtosis = float(stats.kurtosis(gray_res.ravel())) if gray_res.std() > 0 else 0.0
        finding = (f"the noise residual averages {round(energy)} grey levels per pixel "
                   f"with a tail weight (kurtosis) of {round(kurtosis)}")
        # Smoothness (a weak residual) is the "generated" direction before calibration.
        return ExpertReading(-math.log10(energy + 1e-3), _r4({"residual_energy": energy,
                                                               "residual_kurtosis": kurtosis}),
                             {"srm": view}, [], finding)


class LocalArtifactsExpert(_NumpyExpert):
    """Local artifacts: per-patch variance of the Laplacian; a few patches far sharper/noisier than the rest."""
    name = "local_artifacts"

    def analyse(self, rgb: np.ndarray) -> ExpertReading:
        patch, top_k = int(self.options.get("patch", 32)), int(self.options.get("top_k", 3))
        g = _gray(rgb)
        lap = ndimage.laplace(g, mode="mirror")
        tiles = _patches(lap, patch)
        p = tiles.shape[2]
        grid = tiles.var(axis=(2, 3))
        ratio = float(grid.max() / (np.median(grid) + 1e-6))
        finding = f"the most irregular patch has {_times(ratio)} the median local detail"
        return ExpertReading(math.log10(ratio + 1e-6), _r4({"max_median_ratio": ratio,
                                                             "median_patch_variance": float(np.median(grid))}),
                             {"artifact_map": _grid_map(np.log1p(grid), p)}, _top_boxes(grid, p, top_k), finding)


class SpatialConsistencyExpert(_NumpyExpert):
    """Spatial consistency: patches whose noise level is an outlier (robust z-score of residual std)."""
    name = "spatial_consistency"

    def analyse(self, rgb: np.ndarray) -> ExpertReading:
        patch, z_limit = int(self.options.get("patch", 32)), float(self.options.get("z", 3.0))
        tiles = _patches(_gray(srm_residual(rgb)[0]), patch)
        p = tiles.shape[2]
        spread = tiles.std(axis=(2, 3))
        median = float(np.median(spread))
        mad = 1.4826 * float(np.median(np.abs(spread - median))) + 1e-6
        z = np.abs(spread - median) / mad
        outliers = z > z_limit
        max_z, fraction = float(z.max()), float(outliers.mean())
        finding = f"{_share(fraction)} of the patches have an inconsistent noise level (worst z-score {round(max_z)})"
        return ExpertReading(math.log1p(max_z), _r4({"outlier_fraction": fraction, "max_abs_z": max_z}),
                             {"consistency_map": _grid_map(z, p, 0.0, 2 * z_limit)},
                             _top_boxes(z, p, 3, outliers), finding)


class TextureFrequencyExpert(_NumpyExpert):
    """Texture-frequency fusion (PatchCraft's idea): high-frequency residual of rich- vs poor-texture patches.

    Generators reproduce the noise of richly textured regions better than that of flat ones, so the
    rich/poor residual contrast differs from a camera's.
    """
    name = "texture_frequency"

    def analyse(self, rgb: np.ndarray) -> ExpertReading:
        patch = int(self.options.get("patch", 32))
        g = _gray(rgb)
        tiles = _patches(g, patch)
        p = tiles.shape[2]
        # Texture richness: summed absolute differences along the 4 directions (PatchCraft's diversity).
        richness = (np.abs(np.diff(tiles, axis=2)).sum((2, 3)) + np.abs(np.diff(tiles, axis=3)).sum((2, 3))
                    + np.abs(tiles[:, :, 1:, 1:] - tiles[:, :, :-1, :-1]).sum((2, 3))
                    + np.abs(tiles[:, :, 1:, :-1] - tiles[:, :, :-1, 1:]).sum((2, 3)))
        hf = np.abs(_patches(_gray(srm_residual(rgb)[0]), patch)).mean(axis=(2, 3))
        order = np.argsort(richness, axis=None)
        third = max(1, order.size // 3)
        poor, rich = hf.ravel()[order[:third]].mean(), hf.ravel()[order[-third:]].mean()
        contrast = float((rich + 1e-3) / (poor + 1e-3))
        finding = f"richly textured patches carry {_times(contrast)} the fine-detail residual of flat ones"
        return ExpertReading(math.log10(contrast), _r4({"rich_poor_contrast": contrast, "rich_residual": rich,
                                                        "poor_residual": poor}),
                             {"texture_map": _grid_map(np.log1p(richness), p)}, [], finding)


class HighpassSemanticExpert(_NumpyExpert):
    """High-pass semantic view: image minus its Gaussian blur (the reward judge's "high-pass" variant)."""
    name = "highpass_semantic"

    def analyse(self, rgb: np.ndarray) -> ExpertReading:
        sigma = float(self.options.get("sigma", 2.0))
        high = rgb - ndimage.gaussian_filter(rgb, sigma=(sigma, sigma, 0), mode="mirror")
        ratio = float(high.std() / (rgb.std() + 1e-6))
        energy = float(np.abs(high).mean())
        finding = f"fine detail above the blur scale holds {_share(ratio)} of the image contrast"
        view = np.clip(high * 4 + 128, 0, 255).astype(np.uint8)
        return ExpertReading(-math.log10(ratio + 1e-4), _r4({"highpass_ratio": ratio, "highpass_energy": energy}),
                             {"highpass": view}, [], finding)


for _cls in (SpectrumExpert, NoiseResidualExpert, LocalArtifactsExpert, SpatialConsistencyExpert,
             TextureFrequencyExpert, HighpassSemanticExpert):
    EXPERTS.register(_cls.name)(_cls)


class DetectorExpert:
    """A trained AIGI detector as one expert: ``score_fn(images) -> P(fake)`` (statistic = P(fake)).

    ``version`` must identify the weights (the pipeline passes the model's hash): the reading cache is keyed
    by name and version, and a retrained detector must not reuse old readings.
    """

    def __init__(self, name: str, score_fn: Callable[[list[Image.Image]], np.ndarray], version: str) -> None:
        self.name, self.score_fn, self.version = name, score_fn, str(version)

    def read(self, image: Image.Image) -> ExpertReading:
        return self.read_batch([image])[0]

    def read_batch(self, images: list[Image.Image]) -> list[ExpertReading]:
        probs = np.asarray(self.score_fn(images), dtype=float).reshape(-1)
        return [ExpertReading(float(p), _r4({"p_fake": p}), {}, [],
                              f"the trained detector puts the probability of synthesis at {_pct(p)}%")
                for p in probs]


@EXPERTS.register("detector")
def _detector(score_fn: Callable[[list[Image.Image]], np.ndarray], version: str, name: str = "detector"):
    return DetectorExpert(name, score_fn, version)


def build_expert(name: str, **options: Any) -> Expert:
    """One expert by registry name (unknown names fail listing the registered ones)."""
    return EXPERTS.build(name, **options)


def build_experts(names: Sequence[str], options: dict[str, dict] | None = None) -> list[Expert]:
    """Experts by registry name; ``options[name]`` are that expert's keyword arguments."""
    return [build_expert(name, **(options or {}).get(name, {})) for name in names]


# ----------------------------------------------------------------------------------------------- calibration
@dataclass
class Calibration:
    """Statistic -> P(fake) by a 1-D logistic regression fitted on the train split.

    The sign of ``coef`` is the learned direction (whether large statistics mean "generated"). Scores within
    ``margin`` of 0.5 are "uncertain", so weak evidence is not quoted as a verdict in a chain of evidence.
    ``kind="identity"`` passes a statistic that already is a probability (a trained detector) through.
    """
    coef: float = 0.0
    intercept: float = 0.0
    mean: float = 0.0
    scale: float = 1.0
    margin: float = 0.1
    train_accuracy: float = 0.5
    n_train: int = 0
    kind: str = "logistic"

    @property
    def direction(self) -> int:
        return 1 if self.coef >= 0 else -1

    @classmethod
    def fit(cls, statistics: Sequence[float], labels: Sequence[int], margin: float = 0.1) -> Calibration:
        from sklearn.linear_model import LogisticRegression

        x, y = np.asarray(statistics, dtype=float), np.asarray(labels, dtype=int)
        keep = np.isfinite(x)
        x, y = x[keep], y[keep]
        if x.size == 0:
            raise ValueError("Calibration.fit needs at least one finite statistic")
        mean, scale = float(x.mean()), float(x.std()) or 1.0
        cal = cls(mean=mean, scale=scale, margin=margin, n_train=int(x.size))
        if len(set(y.tolist())) < 2 or float(x.std()) == 0.0:
            prior = min(max(float(y.mean()), 1e-3), 1 - 1e-3)   # nothing to learn: predict the base rate
            cal.intercept = math.log(prior / (1 - prior))
        else:
            model = LogisticRegression(C=1.0).fit(((x - mean) / scale)[:, None], y)
            cal.coef, cal.intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
        cal.train_accuracy = float(np.mean((np.array([cal.score(v) for v in x]) >= 0.5) == y))
        return cal

    @classmethod
    def identity(cls, margin: float = 0.1) -> Calibration:
        return cls(margin=margin, kind="identity")

    def score(self, statistic: float) -> float:
        if not math.isfinite(statistic):
            return 0.5
        if self.kind == "identity":
            return float(min(max(statistic, 0.0), 1.0))
        logit = self.coef * (statistic - self.mean) / self.scale + self.intercept
        return float(1 / (1 + math.exp(-max(min(logit, 50.0), -50.0))))

    def verdict(self, score: float) -> str:
        return "fake" if score >= 0.5 + self.margin else "real" if score <= 0.5 - self.margin else "uncertain"

    @staticmethod
    def confidence(score: float) -> float:
        return abs(score - 0.5) * 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**d)


# ----------------------------------------------------------------------------------------------- evidence
_VERDICT_PHRASES = {"fake": "typical of generated images", "real": "typical of real photographs",
                    "uncertain": "which is not conclusive either way"}


@dataclass
class ExpertEvidence:
    """The per-expert record of spec §1.2 that the CoE writer and the rewards consume."""
    expert: str
    version: str
    score: float
    verdict: str
    confidence: float
    measurements: dict[str, float]
    regions: list
    views: dict[str, str]
    text: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExpertEvidence:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def evidence_text(expert: str, finding: str, verdict: str, score: float) -> str:
    """One deterministic sentence, integers and percentages only: the released step splitter cuts "0.85"."""
    return f"{expert}: {finding or 'its anomaly statistic'}, {_VERDICT_PHRASES[verdict]} (score {_pct(score)}%)"


def _png(array: np.ndarray, colormap: bool) -> bytes:
    if colormap and array.ndim == 2:
        from matplotlib import colormaps

        array = (colormaps["viridis"](array.astype(np.float32) / 255.0)[..., :3] * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def evidence_for(readings: dict[str, ExpertReading], calibrations: dict[str, Calibration], views_dir: Path,
                 image_id: str, *, root: Path | None = None) -> dict[str, ExpertEvidence]:
    """Calibrate each reading and save its maps as ``views_dir/<image_id>/<expert>_<view>.png``.

    ``views`` paths are relative to ``root``, the bench folder (default: the parent of ``views_dir``).
    """
    views_dir = Path(views_dir)
    base = Path(root) if root is not None else views_dir.parent
    out: dict[str, ExpertEvidence] = {}
    for name, reading in readings.items():
        if name not in calibrations:
            raise KeyError(f"no calibration for expert {name!r}: fit Calibration.fit on the train split's "
                           f"statistics (or use Calibration.identity() for a probability)")
        cal = calibrations[name]
        score = cal.score(reading.statistic)
        verdict = cal.verdict(score)
        views = {}
        # The maps follow from the cached reading: named by expert version, written once (a rebuild of the
        # bench writes the views of new images only).
        version = hashlib.sha256(reading.version.encode()).hexdigest()[:8]
        for view in reading.maps:  # a cached reading's maps are read only when a view file is missing
            target = views_dir / image_id / f"{name}-{version}_{view}.png"
            if not target.is_file():
                write_bytes_atomic(target, _png(reading.maps[view], view in COLORMAPPED_VIEWS))
            views[view] = target.relative_to(base).as_posix()
        out[name] = ExpertEvidence(name, reading.version, round(score, 4), verdict,
                                   round(cal.confidence(score), 4), dict(reading.measurements),
                                   [list(r) for r in reading.regions], views,
                                   evidence_text(name, reading.finding, verdict, score))
    return out


# ----------------------------------------------------------------------------------------------- cached reading
class UnreadableImage(ValueError):
    """An image file PIL cannot decode (missing, empty, truncated, not an image)."""


def load_image(path: str | Path, image_size: int | None = None) -> Image.Image:
    """Decode fully (truncation shows only on load) and center-crop to ``image_size`` if larger.

    Cropping, not resizing: resampling would erase the pixel-level traces (up-sampling peaks, sensor noise)
    that the experts measure.
    """
    try:
        with Image.open(path) as handle:
            handle.load()
            image = handle.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"cannot read image {path}: {exc}. Re-export or re-download the file, or remove "
                              f"it from the manifest") from exc
    if image_size and max(image.size) > image_size:
        w, h = image.size
        cw, ch = min(w, image_size), min(h, image_size)
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    return image


@dataclass
class ReadStats:
    """Cache accounting of :func:`read_experts` (expert x image readings), for images/s fresh vs cached."""
    hits: int = 0
    misses: int = 0
    images: int = 0
    failed: int = 0          # images with no readings (unreadable, or an expert failed on them)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images / self.seconds, 2) if self.seconds else 0.0}


def _cache_files(cache_dir: Path, expert: Expert, sha: str, image_size: int | None) -> tuple[Path, Path]:
    stem = cache_dir / f"{expert.name}@{expert.version}" / sha[:2] / (f"{sha}-c{image_size}" if image_size else sha)
    return stem.with_suffix(".json"), stem.with_suffix(".npz")


class _CachedMaps(Mapping):
    """A cached reading's maps, decompressed on first access: a rebuild whose view files exist never reads
    them (decompressing every ``.npz`` was 93 % of a warm ``read_experts`` on 512-px images)."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path, self.names, self._arrays = path, list(names), None

    def __getitem__(self, name: str) -> np.ndarray:
        if self._arrays is None:
            try:
                with np.load(self.path) as npz:
                    self._arrays = {k: npz[k] for k in self.names}
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"{self.path}: damaged expert-cache maps ({error}); delete the file (its "
                                 "reading is recomputed on the next build)") from error
        return self._arrays[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _load_cached(meta: Path, arrays: Path) -> ExpertReading | None:
    if not meta.exists():
        return None
    try:
        d = json.loads(meta.read_text())
        if d["maps"] and not arrays.is_file():
            return None
        maps = _CachedMaps(arrays, d["maps"]) if d["maps"] else {}
        return ExpertReading(d["statistic"], d["measurements"], maps, d["regions"], d["finding"], d["version"])
    except (OSError, ValueError, KeyError):  # a damaged or foreign entry is recomputed, not trusted
        return None


def _store(meta: Path, arrays: Path, reading: ExpertReading) -> None:
    if reading.maps:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **reading.maps)
        write_bytes_atomic(arrays, buffer.getvalue())
    # The JSON is written last: it is the marker that the entry is complete.
    write_json_atomic(meta, {"statistic": float(reading.statistic), "measurements": reading.measurements,
                             "regions": reading.regions, "finding": reading.finding, "maps": sorted(reading.maps),
                             "version": reading.version})


def _read_all(expert: Expert, batch: list[Image.Image], pool: ThreadPoolExecutor) -> list[Any]:
    """Readings of a batch; if the batch fails, image by image, a failure becoming its exception."""
    try:
        return list(expert.read_batch(batch) if hasattr(expert, "read_batch") else pool.map(expert.read, batch))
    except Exception:  # noqa: BLE001 - one failing image must not stop the bench: find it below
        out: list[Any] = []
        for image in batch:
            try:
                out.append(expert.read(image))
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out


def read_experts(paths: Sequence[str], experts: Sequence[Expert], cache_dir: str | Path, *,
                 image_size: int | None = None, workers: int | None = None,
                 batch_size: int = 32) -> tuple[list[dict[str, ExpertReading] | None], list[dict], dict]:
    """Every expert's reading of every image, cached per (file sha256, expert name, version, crop size).

    Returns the readings per path (None for an unreadable image), the problems ``{"path", "reason"}`` (an
    unreadable image never stops the batch and is never skipped silently) and the :class:`ReadStats` as a
    dict (cache hits/misses per expert x image, images/s). Fully cached images are not even
    decoded. Experts with ``read_batch`` (detectors) get a batch; the others run on ``workers`` threads.
    """
    cache_dir, stats = Path(cache_dir), ReadStats()
    started = time.perf_counter()
    results: list[dict[str, ExpertReading] | None] = [None] * len(paths)
    problems: list[dict] = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers or 1))
    try:
        for start in progress(range(0, len(paths), batch_size), desc="forensic experts",
                              total=math.ceil(len(paths) / batch_size) if paths else 0):
            chunk = range(start, min(start + batch_size, len(paths)))
            todo: dict[str, list[tuple[int, Path, Path]]] = {e.name: [] for e in experts}
            images: dict[int, Image.Image] = {}
            for i in chunk:
                stats.images += 1
                try:
                    sha = sha256_file(paths[i])
                except OSError as exc:
                    problems.append({"path": str(paths[i]), "reason": f"cannot read file: {exc}"})
                    continue
                results[i], missing = {}, False
                for expert in experts:
                    meta, arrays = _cache_files(cache_dir, expert, sha, image_size)
                    cached = _load_cached(meta, arrays)
                    if cached is None:
                        todo[expert.name].append((i, meta, arrays))
                        missing = True
                    else:
                        stats.hits += 1
                        results[i][expert.name] = cached
                if missing:
                    try:
                        images[i] = load_image(paths[i], image_size)
                    except UnreadableImage as exc:
                        problems.append({"path": str(paths[i]), "reason": str(exc)})
                        results[i] = None
            for expert in experts:
                jobs = [job for job in todo[expert.name] if job[0] in images]
                if not jobs:
                    continue
                readings = _read_all(expert, [images[i] for i, _, _ in jobs], pool)
                for (i, meta, arrays), reading in zip(jobs, readings, strict=True):
                    if isinstance(reading, Exception):
                        problems.append({"path": str(paths[i]), "reason": f"expert {expert.name} failed: "
                                                                          f"{type(reading).__name__}: {reading}"})
                        results[i] = None
                    if results[i] is None:
                        continue
                    stats.misses += 1
                    reading.version = expert.version
                    _store(meta, arrays, reading)
                    results[i][expert.name] = reading
    finally:
        pool.shutdown()
    stats.failed = sum(r is None for r in results)
    stats.seconds = time.perf_counter() - started
    return results, problems, stats.to_dict()
