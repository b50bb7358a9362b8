"""Test-time robustness conditions: the one place they are defined, parsed and grouped into suites.

A *condition* is named by one string, so configs, DVC params, MLflow metric prefixes and leaderboard
rows can carry it: ``clean`` (the untouched input) or ``<kind>_<parameter>``. The built-in kinds:

* ``jpeg_<quality>`` – re-encode as JPEG in memory with PIL at that quality (1..100), e.g. ``jpeg_75``;
* ``blur_<sigma>`` – Gaussian blur with standard deviation ``sigma`` > 0 pixels, e.g. ``blur_1``;
* ``resize_<factor>`` – shrink by ``factor`` in (0, 1] and enlarge back to the original size, both
  bilinear, e.g. ``resize_0.5``;
* ``downsample_<factor>`` – shrink by ``factor`` in (0, 1] and keep the small image (bilinear): the
  low-resolution test of GenImage (LR 112/64 px of 224-px images) and AIGIBench's ``sample`` copies,
  where the detector's own preprocessing decides how to bring the image back to its input size.

The DeeperForensics-1.0 perturbations (Jiang et al., CVPR 2020; the unseen-perturbation protocol of
face-forgery papers such as LipForensics), each at the parameter of one of its five levels (the
values of the authors' ``add_distortion_to_video.py``):

* ``saturation_<s>`` – chroma (Cb, Cr of YCbCr) scaled towards grey by s (levels 0.4 … 0.0);
* ``contrast_<c>`` – pixel values multiplied by c and truncated (levels 0.85 … 0.35);
* ``blockwise_<n>`` – n 8×8 grey blocks per 256 px of the shorter side (levels 16 … 80);
* ``noise_<v>`` – white Gaussian noise of variance v in YCbCr (levels 0.001 … 0.05);
* ``gblur_<k>`` – Gaussian blur with a k×k kernel and sigma k/6 (levels 7 … 21; truncated like the
  OpenCV kernel, to within a kernel-size rounding);
* ``pixelate_<f>`` – shrink by the integer factor f and enlarge back, bilinear (levels 2 … 6; the
  authors call it "JPEG");
* ``h264_<crf>`` – H.264 (libx264, via PyAV) intra coding at that CRF (levels 30 … 40). The authors
  re-encode the whole video; a frame-level condition codes each frame alone (an I-frame), which is what
  a frame-scoring detector sees of it.
Where the authors draw at random (block positions, noise), the draw is seeded by the image's bytes:
the same image always gets the same degradation.

Named suites: ``aigi_robustness`` (the embedded leaderboard's: JPEG q95/q75, blur σ1/σ2, down-up ×½)
and ``genimage_robustness`` (GenImage's degraded test: JPEG q65/q30, blur σ3/σ5, downsampling ×½ and ×¼),
so a leaderboard can be read against the papers' tables; ``deeperforensics`` (all seven types at
levels 1, 3 and 5) and ``deeperforensics_full`` (all five levels).

Families add kinds (DeeperForensics-style saturation, contrast, noise, pixelation for faces) with
:func:`register_condition_kind`, and named lists with :func:`register_condition_suite`; nothing
here needs editing. Every condition is a pure, deterministic callable ``PIL.Image -> PIL.Image``
(no randomness: a degraded test set is reproducible bit for bit on one machine) and picklable (a
frozen dataclass, not a closure) so it reaches DataLoader worker processes. Every non-identity
built-in returns an RGB image of the input's size.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image

from genguard.registry import Registry

Condition = Callable[[Image.Image], Image.Image]
CLEAN = "clean"

# kind prefix -> factory(parameter text) -> Condition. A factory raises ValueError with the reason
# when the parameter is malformed or out of range; get_condition adds the list of valid forms.
CONDITION_KINDS: Registry[Condition] = Registry("condition kind")
_FORMS: dict[str, str] = {}
_SUITES: dict[str, tuple[str, ...]] = {}
# Read-only view: suites change only through register_condition_suite, which validates them.
CONDITION_SUITES: Mapping[str, tuple[str, ...]] = MappingProxyType(_SUITES)

_PREFIX = re.compile(r"[a-z][a-z0-9]*")  # no "_": the first underscore separates kind and parameter
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def register_condition_kind(prefix: str, form: str) -> Callable[[Callable[[str], Condition]],
                                                                  Callable[[str], Condition]]:
    """Decorator: register ``factory(parameter: str) -> Condition`` for names ``<prefix>_<parameter>``.

    ``form`` describes the valid names for error messages, e.g. ``"jpeg_<quality 1..100>"``.
    """
    if not _PREFIX.fullmatch(prefix) or prefix == CLEAN:
        raise ValueError(f"a condition kind prefix must match {_PREFIX.pattern} and not be {CLEAN!r}, "
                         f"got {prefix!r}")

    def decorate(factory: Callable[[str], Condition]) -> Callable[[str], Condition]:
        CONDITION_KINDS.register(prefix)(factory)
        _FORMS[prefix] = form
        return factory

    return decorate


def valid_forms() -> str:
    """Every valid spelling, for error messages and ``--help`` texts."""
    return " | ".join([CLEAN, *(_FORMS[prefix] for prefix in CONDITION_KINDS.names())])


def parse_number(text: str, what: str) -> float:
    """A non-negative decimal (``1``, ``0.5``, ``.5``); ValueError naming ``what`` otherwise."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{what} must be a non-negative number, got {text!r}")
    return float(text)


def format_number(value: float) -> str:
    """Canonical spelling, so ``blur_1.0`` and ``blur_1`` name the same condition in logs."""
    return f"{value:g}"


# ------------------------------------------------------------------------------------ built-in kinds


def _gaussian_rgb(image: Image.Image, sigma: float, truncate: float = 4.0) -> Image.Image:
    """scipy's exact Gaussian per channel with a reflect border: what the CNNDetection/AIGIBench and
    DeeperForensics code use, so "sigma" means the same as in their tables (PIL's GaussianBlur is a
    box-filter approximation)."""
    from scipy.ndimage import gaussian_filter

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    blurred = gaussian_filter(pixels, sigma=(sigma, sigma, 0), mode="reflect", truncate=truncate)
    return Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8), mode="RGB")


def _down_up(image: Image.Image, small_side: Callable[[int], int]) -> Image.Image:
    """Bilinear down to ``small_side(width) x small_side(height)``, then back to the original size."""
    rgb = image.convert("RGB")
    width, height = rgb.size
    small = (small_side(width), small_side(height))
    return rgb.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class Identity:
    name: str = CLEAN

    def __call__(self, image: Image.Image) -> Image.Image:
        return image


@dataclass(frozen=True)
class JpegReencode:
    quality: int

    @property
    def name(self) -> str:
        return f"jpeg_{self.quality}"

    def __call__(self, image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        # Chroma subsampling changes the damage a lot; pin it (4:2:0, libjpeg's usual default) so the
        # degradation does not depend on Pillow's defaults of the day.
        image.convert("RGB").save(buffer, format="JPEG", quality=self.quality, subsampling=2)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")


@dataclass(frozen=True)
class GaussianBlur:
    sigma: float

    @property
    def name(self) -> str:
        return f"blur_{format_number(self.sigma)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        return _gaussian_rgb(image, self.sigma)


@dataclass(frozen=True)
class DownUpResize:
    factor: float

    @property
    def name(self) -> str:
        return f"resize_{format_number(self.factor)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        return _down_up(image, lambda side: max(1, round(side * self.factor)))


@dataclass(frozen=True)
class Downsample:
    factor: float

    @property
    def name(self) -> str:
        return f"downsample_{format_number(self.factor)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        small = (max(1, round(width * self.factor)), max(1, round(height * self.factor)))
        return rgb.resize(small, Image.Resampling.BILINEAR)


@register_condition_kind("jpeg", "jpeg_<quality 1..100>")
def jpeg_condition(parameter: str) -> Condition:
    if not parameter.isdigit():
        raise ValueError(f"JPEG quality must be an integer, got {parameter!r}")
    quality = int(parameter)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return JpegReencode(quality)


@register_condition_kind("blur", "blur_<sigma > 0 px>")
def blur_condition(parameter: str) -> Condition:
    sigma = parse_number(parameter, "blur sigma")
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0 (use {CLEAN!r} for none), got {parameter!r}")
    return GaussianBlur(sigma)


@register_condition_kind("resize", "resize_<factor in (0, 1]>")
def resize_condition(parameter: str) -> Condition:
    factor = parse_number(parameter, "resize factor")
    if not 0 < factor <= 1:
        raise ValueError(f"resize factor must be in (0, 1], got {parameter!r}")
    return DownUpResize(factor)


@register_condition_kind("downsample", "downsample_<factor in (0, 1]>")
def downsample_condition(parameter: str) -> Condition:
    factor = parse_number(parameter, "downsample factor")
    if not 0 < factor <= 1:
        raise ValueError(f"downsample factor must be in (0, 1], got {parameter!r}")
    return Downsample(factor)


# ------------------------------------------------------------------------------------ DeeperForensics

DEEPERFORENSICS_LEVELS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "saturation": ("0.4", "0.3", "0.2", "0.1", "0"),
    "contrast": ("0.85", "0.725", "0.6", "0.475", "0.35"),
    "blockwise": ("16", "32", "48", "64", "80"),
    "noise": ("0.001", "0.002", "0.005", "0.01", "0.05"),
    "gblur": ("7", "9", "13", "17", "21"),
    "pixelate": ("2", "3", "4", "5", "6"),
    "h264": ("30", "32", "35", "38", "40"),
})


def _content_rng(pixels: np.ndarray, salt: str) -> np.random.Generator:
    import hashlib

    digest = hashlib.sha256(salt.encode() + pixels.tobytes()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# YCbCr in [0, 1] with the studio ranges the authors use (Y 16..235, Cb/Cr 16..240 of 255).
def _to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.float64) / 255.0 for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb, cr = (b - y) * 0.564 + 0.5, (r - y) * 0.713 + 0.5
    out = np.stack([y, cb, cr], axis=-1)
    out[..., 0] = (out[..., 0] * (235 - 16) + 16) / 255.0
    out[..., 1:] = (out[..., 1:] * (240 - 16) + 16) / 255.0
    return out


def _from_ycbcr(ycbcr: np.ndarray) -> np.ndarray:
    y = (ycbcr[..., 0] * 255.0 - 16) / (235 - 16)
    cb = (ycbcr[..., 1] * 255.0 - 16) / (240 - 16) - 0.5
    cr = (ycbcr[..., 2] * 255.0 - 16) / (240 - 16) - 0.5
    r, b = y + cr / 0.713, y + cb / 0.564
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.rint(np.stack([r, g, b], axis=-1) * 255.0), 0, 255).astype(np.uint8)


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class Saturation:
    factor: float

    @property
    def name(self) -> str:
        return f"saturation_{format_number(self.factor)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        ycbcr = _to_ycbcr(_rgb_array(image))
        ycbcr[..., 1:] = 0.5 + (ycbcr[..., 1:] - 0.5) * self.factor
        return Image.fromarray(_from_ycbcr(ycbcr), mode="RGB")


@dataclass(frozen=True)
class Contrast:
    factor: float

    @property
    def name(self) -> str:
        return f"contrast_{format_number(self.factor)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        pixels = (_rgb_array(image).astype(np.float32) * self.factor).astype(np.uint8)
        return Image.fromarray(pixels, mode="RGB")


@dataclass(frozen=True)
class BlockWise:
    blocks_per_256px: int
    width: int = 8

    @property
    def name(self) -> str:
        return f"blockwise_{self.blocks_per_256px}"

    def __call__(self, image: Image.Image) -> Image.Image:
        pixels = _rgb_array(image).copy()
        height, width = pixels.shape[:2]
        # At least one block's worth per 256 px (the authors' integer division gives none below 256 px,
        # which would make the condition a no-op on face crops).
        count = max(1, min(height, width) // 256) * self.blocks_per_256px
        rng = _content_rng(pixels, self.name)
        side = min(self.width, height, width)
        for _ in range(count):
            top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            pixels[top:top + side, left:left + side] = 128
        return Image.fromarray(pixels, mode="RGB")


@dataclass(frozen=True)
class ColourNoise:
    variance: float

    @property
    def name(self) -> str:
        return f"noise_{format_number(self.variance)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        pixels = _rgb_array(image)
        ycbcr = _to_ycbcr(pixels)
        ycbcr = ycbcr + np.sqrt(self.variance) * _content_rng(pixels, self.name).standard_normal(ycbcr.shape)
        return Image.fromarray(_from_ycbcr(ycbcr), mode="RGB")


@dataclass(frozen=True)
class KernelBlur:
    kernel: int

    @property
    def name(self) -> str:
        return f"gblur_{self.kernel}"

    def __call__(self, image: Image.Image) -> Image.Image:
        sigma = self.kernel / 6.0
        return _gaussian_rgb(image, sigma, truncate=(self.kernel // 2) / sigma)  # the k x k kernel's radius


@dataclass(frozen=True)
class Pixelate:
    factor: int

    @property
    def name(self) -> str:
        return f"pixelate_{self.factor}"

    def __call__(self, image: Image.Image) -> Image.Image:
        return _down_up(image, lambda side: max(1, side // self.factor))


@dataclass(frozen=True)
class H264:
    crf: int

    @property
    def name(self) -> str:
        return f"h264_{self.crf}"

    def __call__(self, image: Image.Image) -> Image.Image:
        import av  # PyAV bundles FFmpeg with libx264

        pixels = _rgb_array(image)
        height, width = pixels.shape[:2]
        # 4:2:0 chroma needs even sides: pad by edge replication, crop after decoding.
        padded = np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=1)
            stream.width, stream.height, stream.pix_fmt = padded.shape[1], padded.shape[0], "yuv420p"
            stream.options = {"crf": str(self.crf), "preset": "medium"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        buffer.seek(0)
        with av.open(buffer) as container:
            decoded = next(container.decode(video=0)).to_ndarray(format="rgb24")
        return Image.fromarray(np.ascontiguousarray(decoded[:height, :width]), mode="RGB")


def _ranged(parameter: str, what: str, low: float, high: float, integer: bool = False) -> float:
    value = parse_number(parameter, what)
    if not low <= value <= high or (integer and value != int(value)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{what} must be {kind} in [{format_number(low)}, {format_number(high)}], got {parameter!r}")
    return value


@register_condition_kind("saturation", "saturation_<factor 0..1>")
def saturation_condition(parameter: str) -> Condition:
    return Saturation(_ranged(parameter, "saturation factor", 0.0, 1.0))


@register_condition_kind("contrast", "contrast_<factor 0..1>")
def contrast_condition(parameter: str) -> Condition:
    return Contrast(_ranged(parameter, "contrast factor", 0.0, 1.0))


@register_condition_kind("blockwise", "blockwise_<blocks per 256 px, 1..1000>")
def blockwise_condition(parameter: str) -> Condition:
    return BlockWise(int(_ranged(parameter, "block count", 1, 1000, integer=True)))


@register_condition_kind("noise", "noise_<variance 0..1>")
def noise_condition(parameter: str) -> Condition:
    return ColourNoise(_ranged(parameter, "noise variance", 0.0, 1.0))


@register_condition_kind("gblur", "gblur_<odd kernel 3..99>")
def kernel_blur_condition(parameter: str) -> Condition:
    kernel = int(_ranged(parameter, "blur kernel", 3, 99, integer=True))
    if kernel % 2 == 0:
        raise ValueError(f"blur kernel must be odd, got {kernel}")
    return KernelBlur(kernel)


@register_condition_kind("pixelate", "pixelate_<integer factor 2..64>")
def pixelate_condition(parameter: str) -> Condition:
    return Pixelate(int(_ranged(parameter, "pixelation factor", 2, 64, integer=True)))


@register_condition_kind("h264", "h264_<crf 0..51>")
def h264_condition(parameter: str) -> Condition:
    return H264(int(_ranged(parameter, "H.264 CRF", 0, 51, integer=True)))


# ------------------------------------------------------------------------------------ lookup


def get_condition(name: str) -> Condition:
    """Parse ``name`` (``clean`` or ``<kind>_<parameter>``, case-insensitive) into its callable.

    The result has a ``name`` attribute with the canonical spelling (``blur_1.0`` -> ``blur_1``).
    Raises ValueError for an unknown kind or a bad parameter, listing the valid forms.
    """
    text = str(name).strip().lower()
    if text == CLEAN:
        return Identity()
    prefix, separator, parameter = text.partition("_")
    if not separator or prefix not in CONDITION_KINDS:
        raise ValueError(f"unknown condition {name!r}; valid: {valid_forms()}")
    try:
        return CONDITION_KINDS.get(prefix)(parameter)
    except ValueError as error:
        raise ValueError(f"bad condition {name!r}: {error}; valid: {valid_forms()}") from None


def canonical_condition(name: str) -> str:
    """The canonical spelling of a condition name (validates it)."""
    return get_condition(name).name


def register_condition_suite(name: str, conditions: Sequence[str]) -> None:
    """Name a list of conditions (validated, canonicalised, ``clean`` first) for configs to refer to."""
    if not name or name in _SUITES:
        raise ValueError(f"condition suite {name!r} is empty or registered already")
    if isinstance(conditions, str):
        raise TypeError("a condition suite is a list of condition names, not one string")
    _SUITES[name] = tuple(_resolve_list(conditions))


def _resolve_list(names: Sequence[str]) -> list[str]:
    canonical = [canonical_condition(name) for name in names]
    duplicated = sorted({name for name in canonical if canonical.count(name) > 1})
    if duplicated:
        raise ValueError(f"condition(s) listed more than once (after canonical spelling): {duplicated}")
    # clean first: it is the reference every degraded number is compared with, and the ranking condition.
    return [CLEAN, *(name for name in canonical if name != CLEAN)]


def resolve_conditions(spec: str | Sequence[str]) -> list[str]:
    """The canonical condition names a spec stands for, ``clean`` always first.

    ``spec`` is a suite name (see :data:`CONDITION_SUITES`) or a list of condition names. Each name is
    validated and canonicalised; duplicates are refused; ``clean`` is added when absent and moved to
    the front when present.
    """
    if isinstance(spec, str):
        if spec in _SUITES:
            return list(_SUITES[spec])
        hint = ""
        try:
            hint = f"; to run the single condition, give a list: [{canonical_condition(spec)!r}]"
        except ValueError:
            pass
        raise ValueError(f"unknown condition suite {spec!r}; known suites: {sorted(_SUITES)}{hint}")
    if not isinstance(spec, Sequence):
        raise TypeError("conditions must be a suite name or a list of condition names, "
                        f"got {type(spec).__name__}")
    return _resolve_list(spec)


register_condition_suite("aigi_robustness", ("clean", "jpeg_95", "jpeg_75", "blur_1", "blur_2", "resize_0.5"))
register_condition_suite("deeperforensics", tuple(f"{kind}_{levels[i]}" for kind, levels in DEEPERFORENSICS_LEVELS.items()
                                                  for i in (0, 2, 4)))
register_condition_suite("deeperforensics_full", tuple(f"{kind}_{level}" for kind, levels in DEEPERFORENSICS_LEVELS.items()
                                                       for level in levels))
register_condition_suite("genimage_robustness", ("clean", "jpeg_65", "jpeg_30", "blur_3", "blur_5", "downsample_0.5",
                                                 "downsample_0.25"))
