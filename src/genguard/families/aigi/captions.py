"""Per-image captions: the "semantics" NS-Net projects out and DGS-Net's caption head learns from.

Two sources, chosen by the ``captions`` parameter block of a detector:

* ``kind: template`` (embedded default) — a deterministic scene description computed from the pixels
  ("a bright photo, blue above and green below"). It stands in for the BLIP captioner the papers'
  code reads captions from: it names what is *in* the picture (brightness, dominant colours, their
  layout), not how it was made, so a real crop and the fakes derived from it mostly get the same
  caption — the "real and fake share semantics" case NS-Net is about. It is computed from the clean
  file once per image; degraded test copies keep the caption of their clean original (a captioner
  describes the scene, which JPEG or blur do not change).
* ``kind: file`` (paper scale) — a JSON object mapping image → caption, as DGS-Net's code reads
  (``<data-root>_text/<split>.json``). ``path`` is one JSON file or a folder of ``<split>.json``
  files. Keys may be absolute paths, paths relative to the JSON's folder's sibling data root, or
  bare file names; the first that matches wins. Produce it once with any captioner (BLIP base in
  the papers' replications).

A missing caption fails before training with the files named and the fix.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from genguard.data.images import load_rgb
from genguard.data.manifest import DataValidationError

CAPTION_KINDS = ("template", "file")
# Template captions by file content (sha256): NS-Net and DGS-Net in one benchmark caption the same files.
_TEMPLATE_BY_CONTENT: dict[str, str] = {}
_HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "teal"), (255, "blue"),
         (290, "purple"), (335, "pink"), (360, "red"))


def _colour_word(pixels: np.ndarray) -> str:
    """Name of the mean colour of an Nx3 float [0,1] block (grey words when unsaturated)."""
    r, g, b = pixels.mean(axis=0)
    hue, lightness, saturation = colorsys.rgb_to_hls(float(r), float(g), float(b))
    if saturation < 0.15 or lightness < 0.08 or lightness > 0.92:
        return "black" if lightness < 0.2 else "white" if lightness > 0.8 else "grey"
    degrees = hue * 360.0
    return next(name for limit, name in _HUES if degrees < limit)


def template_caption(image: Image.Image | np.ndarray) -> str:
    """A scene description from the pixels: brightness, then the colours of the top and bottom halves."""
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
        image.thumbnail((32, 32))  # statistics of a thumbnail: cheap and insensitive to fine artifacts
        array = np.asarray(image, dtype=np.float32) / 255.0
    else:
        array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"template_caption expects an HxWx3 image, got shape {array.shape}")
    luminance = float((array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean())
    brightness = "dark" if luminance < 0.3 else "bright" if luminance > 0.6 else "softly lit"
    half = max(1, array.shape[0] // 2)
    top, bottom = _colour_word(array[:half].reshape(-1, 3)), _colour_word(array[half:].reshape(-1, 3))
    if top == bottom:
        return f"a {brightness} photo, mostly {top}"
    return f"a {brightness} photo, {top} above and {bottom} below"


def _caption_tables(path: Path) -> list[tuple[Path, dict[str, str]]]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataValidationError(f"caption file(s) not found at {path}: set captions.path to a JSON file "
                                  "{image path: caption} or a folder of <split>.json files")
    tables = []
    for file in files:
        try:
            table = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataValidationError(f"{file}: not readable JSON ({error}); "
                                      "it must map image paths to captions") from None
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise DataValidationError(f"{file}: expected a JSON object mapping image path -> caption string")
        tables.append((file, table))
    return tables


def _lookup(tables: list[tuple[Path, dict[str, str]]]):
    by_name: dict[str, str] = {}
    for _, table in tables:
        for key, caption in table.items():
            by_name.setdefault(Path(key).name, caption)

    def find(image_path: str) -> str | None:
        resolved = str(Path(image_path).resolve())
        for file, table in tables:
            # DGS-Net layout: <root>_text/<split>.json sits next to <root>; keys relative to <root>
            data_root = file.parent.with_name(file.parent.name.removesuffix("_text"))
            for key in (image_path, resolved, _relative(resolved, data_root)):
                if key is not None and key in table:
                    return table[key]
        return by_name.get(Path(image_path).name)

    return find


def _relative(path: str, root: Path) -> str | None:
    try:
        return str(Path(path).relative_to(root.resolve()))
    except ValueError:
        return None


def captions_for(frame: pd.DataFrame, cfg: dict[str, Any] | None) -> list[str]:
    """One caption per manifest row, in row order."""
    cfg = dict(cfg or {"kind": "template"})
    kind = cfg.get("kind", "template")
    if kind not in CAPTION_KINDS:
        raise ValueError(f"captions.kind must be one of {CAPTION_KINDS}, got {kind!r}")
    paths: Sequence[str] = frame["path"].tolist()
    if kind == "template":
        keys = frame["sha256"].tolist() if "sha256" in frame else list(paths)
        for path, key in zip(paths, keys, strict=True):
            if key not in _TEMPLATE_BY_CONTENT:  # each file decoded once per process, whichever detector asks
                _TEMPLATE_BY_CONTENT[key] = template_caption(load_rgb(path))
        return [_TEMPLATE_BY_CONTENT[key] for key in keys]
    if not cfg.get("path"):
        raise ValueError("captions.kind 'file' needs captions.path (a JSON file or a folder of <split>.json)")
    find = _lookup(_caption_tables(Path(cfg["path"])))
    captions = [find(p) for p in paths]
    missing = [p for p, c in zip(paths, captions, strict=True) if c is None]
    if missing:
        listed = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DataValidationError(f"{len(missing)} image(s) have no caption in {cfg['path']}:\n  {listed}\n"
                                  "Add them to the caption JSON (caption these files with your captioner) "
                                  "or use captions.kind: template")
    return captions  # type: ignore[return-value]


def captions_for_images(images: Sequence[Image.Image] | np.ndarray, cfg: dict[str, Any] | None) -> list[str]:
    """Captions for images given in memory (inference): made from the pixels like in training.

    Only template captions can be made without the captioner the model was trained with; a model
    trained on caption files needs its captions passed in.
    """
    source = dict(cfg or {"kind": "template"})
    if source.get("kind", "template") != "template":
        raise ValueError(f"this detector classifies with each image's caption and was trained on captions from "
                         f"{source}; pass captions=[...] (one per image), or a 'caption' column to the MLflow model")
    pictures = images if not isinstance(images, np.ndarray) else [Image.fromarray(a) for a in images]
    return [template_caption(picture) for picture in pictures]
