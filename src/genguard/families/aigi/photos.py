"""Real photographs that ship offline: colour photos inside PyPI wheels and two Debian wallpaper packages.

They are the "real" class of the embedded default AIGI dataset (see ``default_aigi``). Nothing here
reaches the network except ``fetch_debian_photos``, which asks apt for two ``.deb`` files and unpacks
them (no ``dpkg -i``, no root needed for the unpacking itself).

Licences come from the packages themselves: the skimage docstrings, sklearn's images README, and the
Debian ``copyright`` files (DEP-5, read per file). The photos are used locally to build crops; the
project does not commit them or anything derived from them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from genguard.io.atomic import atomic_dir

logger = logging.getLogger(__name__)

DEBIAN_PHOTO_PACKAGES: tuple[str, ...] = ("lomiri-wallpapers-16.04", "mate-backgrounds")
DEFAULT_DEBIAN_PHOTO_DIR = Path("data/01_raw/debian_photos")
MAX_PHOTO_SIDE = 1024
_MARKER_NAME = ".genguard_debian_photos.json"
_PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
# Used only when a package's copyright file is missing or names no licence for a file.
_PACKAGE_FALLBACK_LICENCE = {"lomiri-wallpapers-16.04": "unknown", "mate-backgrounds": "GPL-2+"}


@dataclass(frozen=True)
class RealPhoto:
    """One real photograph with its provenance.

    Pixels are held either directly (``rgb``) or behind a ``loader`` so that listing photos stays cheap;
    ``load()`` returns an H×W×3 uint8 array in both cases. Pixels take no part in equality.
    """

    name: str
    source: str  # e.g. "skimage:astronaut", "debian:mate-backgrounds:nature/Aqua.jpg"
    licence: str  # SPDX-like id where one exists, e.g. "CC-BY-4.0", "GPL-2+", "public-domain (NASA)"
    rgb: np.ndarray | None = field(default=None, compare=False, repr=False)
    loader: Callable[[], np.ndarray] | None = field(default=None, compare=False, repr=False)
    attribution: str = ""

    def __post_init__(self) -> None:
        if (self.rgb is None) == (self.loader is None):
            raise ValueError(f"RealPhoto {self.name!r}: give exactly one of rgb= or loader=")

    def load(self) -> np.ndarray:
        image = self.rgb if self.rgb is not None else self.loader()  # type: ignore[misc]
        return as_rgb_uint8(image, what=self.source)


def as_rgb_uint8(image: np.ndarray, what: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:  # greyscale: replicate so every photo has three channels
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"{what}: expected an H×W×3 image, got shape {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------------------------------
# Photos inside installed wheels
# --------------------------------------------------------------------------------------------------

def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if name == "stereo_motorcycle" else image  # (left, right, disparity)

    return load


def _sklearn_loader(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib_loader(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib.cbook import get_sample_data

        with Image.open(get_sample_data(filename, asfileobj=False)) as image:
            return np.asarray(image.convert("RGB"))

    return load


# (module that must import, name, source, licence, attribution, loader factory, loader argument)
_WHEEL_PHOTOS: tuple[tuple[str, str, str, str, str, Callable[[str], Callable[[], np.ndarray]], str], ...] = (
    ("skimage", "astronaut", "skimage:astronaut", "public-domain (NASA)", "NASA (Eileen Collins)",
     _skimage_loader, "astronaut"),
    ("skimage", "chelsea", "skimage:chelsea", "CC0-1.0", "Stefan van der Walt", _skimage_loader, "chelsea"),
    ("skimage", "coffee", "skimage:coffee", "CC0-1.0", "Rachel Michetti", _skimage_loader, "coffee"),
    ("skimage", "rocket", "skimage:rocket", "public-domain (SpaceX)", "SpaceX", _skimage_loader, "rocket"),
    # The docstring states no licence for the Middlebury 2014 stereo data; say so rather than guess.
    ("skimage", "motorcycle_left", "skimage:stereo_motorcycle", "unknown (Middlebury 2014 stereo data)",
     "Middlebury Stereo Datasets 2014", _skimage_loader, "stereo_motorcycle"),
    ("sklearn", "china", "sklearn:china.jpg", "CC-BY-2.0", "danielbuechele (Flickr)",
     _sklearn_loader, "china.jpg"),
    ("sklearn", "flower", "sklearn:flower.jpg", "CC-BY-2.0", "vultilion (Flickr)", _sklearn_loader, "flower.jpg"),
    # A US Navy photograph; the wheel itself states no licence.
    ("matplotlib", "grace_hopper", "matplotlib:grace_hopper.jpg", "public-domain (US Navy)", "US Navy",
     _matplotlib_loader, "grace_hopper.jpg"),
)


def wheel_photos() -> list[RealPhoto]:
    """The 8 colour photographs shipped by scikit-image, scikit-learn and matplotlib (lazy loaders).

    A photo whose package does not import is skipped with a warning, so a partial install still works.
    """
    import importlib

    photos: list[RealPhoto] = []
    available: dict[str, bool] = {}
    for module, name, source, licence, attribution, factory, argument in _WHEEL_PHOTOS:
        if module not in available:
            try:
                importlib.import_module(module)
                available[module] = True
            except ImportError:
                logger.warning("%s is not installed; its sample photos are left out", module)
                available[module] = False
        if available[module]:
            photos.append(RealPhoto(name=name, source=source, licence=licence, attribution=attribution,
                                    loader=factory(argument)))
    return photos


# --------------------------------------------------------------------------------------------------
# Debian wallpaper packages
# --------------------------------------------------------------------------------------------------

def fetch_debian_photos(dest: str | Path = DEFAULT_DEBIAN_PHOTO_DIR,
                        packages: tuple[str, ...] = DEBIAN_PHOTO_PACKAGES,
                        timeout_s: float = 600.0) -> Path:
    """Download the wallpaper ``.deb`` files with ``apt-get download`` and unpack them into ``dest``.

    Idempotent: a marker file written last records the packages, and a later call with the same
    packages returns at once. Unpacking happens in a temporary sibling that replaces ``dest`` as a
    whole, so an interrupted fetch never leaves half a tree. If apt is missing or fails, a warning is
    logged and ``dest`` is returned as it was: the default dataset then falls back to the wheel photos.
    """
    dest = Path(dest)
    marker = dest / _MARKER_NAME
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("packages") == list(packages):
                logger.info("Debian photos already unpacked in %s", dest)
                return dest
        except (OSError, ValueError):
            pass  # unreadable marker: fetch again
    missing_tools = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing_tools:
        logger.warning("%s not found; skipping the Debian photos (the wheel photos still work)",
                       " and ".join(missing_tools))
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".genguard-debs-", dir=dest.parent) as download_dir:
            if not _apt_download(packages, Path(download_dir), timeout_s):
                # The usual cause is a fresh machine without package lists; refresh them once and retry.
                logger.info("apt-get download failed; running apt-get update and retrying")
                update = _run(["apt-get", "update"], Path(download_dir), timeout_s)
                if update.returncode != 0 or not _apt_download(packages, Path(download_dir), timeout_s):
                    logger.warning("could not download %s with apt-get; skipping the Debian photos. "
                                   "stderr: %s", ", ".join(packages), update.stderr.strip()[-500:])
                    return dest
            debs = sorted(Path(download_dir).glob("*.deb"))
            with atomic_dir(dest) as staging:
                for deb in debs:
                    subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True,
                                   capture_output=True, timeout=timeout_s)
                (staging / _MARKER_NAME).write_text(json.dumps(
                    {"packages": list(packages), "debs": [deb.name for deb in debs]}, indent=2) + "\n")
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("fetching the Debian photos failed (%s); skipping them", error)
        return dest
    logger.info("unpacked %s into %s", ", ".join(packages), dest)
    return dest


def _run(command: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _apt_download(packages: tuple[str, ...], directory: Path, timeout_s: float) -> bool:
    result = _run(["apt-get", "download", *packages], directory, timeout_s)
    found = {deb.name.split("_", 1)[0] for deb in directory.glob("*.deb")}
    if result.returncode != 0 or not set(packages) <= found:
        logger.debug("apt-get download: rc=%s stderr=%s", result.returncode, result.stderr.strip()[-500:])
        return False
    return True


def debian_photos(root: str | Path | None, max_side: int = MAX_PHOTO_SIDE) -> list[RealPhoto]:
    """The real photographs of the two wallpaper packages unpacked under ``root`` (lazy loaders).

    ``root`` is the ``dpkg-deb -x`` target (or ``/`` when the packages are installed system-wide).
    lomiri-wallpapers-16.04 gives the 15 ``*_by_*.jpg`` photos; mate-backgrounds gives
    ``mate/nature/*`` only, its other folders being artwork. Each is downscaled on load so that its
    long side is at most ``max_side``. Returns an empty list when nothing is there.
    """
    if root is None:
        return []
    backgrounds = Path(root) / "usr" / "share" / "backgrounds"
    if not backgrounds.is_dir():
        return []
    # The copyright files name files by their upstream path ("16.04/x.jpg", "nature/x.jpg"), not by
    # where the package installs them; each group maps an installed file back to that upstream path.
    groups: tuple[tuple[str, list[Path], Callable[[Path], str]], ...] = (
        ("lomiri-wallpapers-16.04", sorted(backgrounds.glob("*_by_*.jpg")),
         lambda path: f"16.04/{path.name}"),
        ("mate-backgrounds", sorted(p for p in (backgrounds / "mate" / "nature").glob("*")
                                    if p.suffix.lower() in _PHOTO_SUFFIXES),
         lambda path: path.relative_to(backgrounds / "mate").as_posix()),
    )
    photos: list[RealPhoto] = []
    for package, paths, upstream_path in groups:
        licences = _read_dep5_licences(Path(root) / "usr" / "share" / "doc" / package / "copyright")
        for path in paths:
            upstream = upstream_path(path)
            licence, attribution = _licence_for(upstream, licences,
                                                _PACKAGE_FALLBACK_LICENCE.get(package, "unknown"))
            photos.append(RealPhoto(
                name=path.stem, source=f"debian:{package}:{upstream}", licence=licence,
                attribution=attribution, loader=_downscaled_loader(path, max_side)))
    return photos


def _downscaled_loader(path: Path, max_side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return load_downscaled(path, max_side)

    return load


def load_downscaled(path: str | Path, max_side: int = MAX_PHOTO_SIDE) -> np.ndarray:
    """Decode an image as RGB uint8 with its long side at most ``max_side`` (aspect ratio kept)."""
    with Image.open(path) as image:
        width, height = image.size
        scale = min(1.0, max_side / max(width, height))
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        if scale < 1.0:
            # JPEG only: decode at 1/2, 1/4 or 1/8 in the DCT domain, never below the target size.
            # A 5312-px wallpaper then decodes in a fraction of the time; the resize below finishes it.
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        rgb = image.convert("RGB")
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS)
        return np.asarray(rgb)


def _read_dep5_licences(copyright_file: Path) -> list[tuple[list[str], str, str]]:
    """``(file patterns, licence, copyright holders)`` per ``Files:`` paragraph of a DEP-5 file."""
    if not copyright_file.is_file():
        return []
    paragraphs: list[tuple[list[str], str, str]] = []
    for block in copyright_file.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields: dict[str, list[str]] = {}
        current: str | None = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and current is not None:  # continuation line
                fields[current].append(line.strip())
            elif ":" in line:
                current, value = line.split(":", 1)
                current = current.strip()
                fields[current] = [value.strip()] if value.strip() else []
        if "Files" in fields and "License" in fields and fields["License"]:
            patterns = " ".join(fields["Files"]).split()
            holders = "; ".join(v for v in fields.get("Copyright", []) if v)
            paragraphs.append((patterns, fields["License"][0], holders))
    return paragraphs


def _licence_for(upstream_path: str, paragraphs: list[tuple[list[str], str, str]],
                 fallback: str) -> tuple[str, str]:
    # DEP-5: "*" also matches "/", and the last matching paragraph wins (the "Files: *" default
    # paragraph comes first).
    licence, holders = fallback, ""
    for patterns, paragraph_licence, paragraph_holders in paragraphs:
        if any(fnmatch.fnmatchcase(upstream_path, pattern) for pattern in patterns):
            licence, holders = paragraph_licence, paragraph_holders
    return licence, holders


def all_photos(photo_root: str | Path | None = None) -> list[RealPhoto]:
    """Wheel photos plus, when ``photo_root`` holds them, the Debian photos."""
    return wheel_photos() + debian_photos(photo_root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genguard.families.aigi.photos",
        description="Fetch the Debian wallpaper photos used as real images by the default AIGI dataset.")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEBIAN_PHOTO_DIR,
                        help=f"unpack target (default: {DEFAULT_DEBIAN_PHOTO_DIR})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dest = fetch_debian_photos(args.dest)
    photos = debian_photos(dest)
    print(f"{len(photos)} Debian photos in {dest}; {len(wheel_photos())} wheel photos")
    return 0  # a failed fetch is a warning, not an error: the build falls back to the wheel photos


if __name__ == "__main__":
    sys.exit(main())
