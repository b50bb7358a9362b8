"""The testbed's captioned image set on disk: PNG renders of :mod:`~genguard.families.t2i.shapes` with a
manifest (one row per image: caption, shape, colour, style), built once per content key and cached
(a DVC output), and the prompt checks every T2I pipeline runs before it trains.

Layout: ``<out_dir>/<split>/<shape>/<style>/<index>_<colour>.png`` + ``manifest.parquet`` +
``build_info.json`` (the :mod:`genguard.data.builds` contract). ``label`` is the shape's class index
(the object concept); leakage is checked on file hashes.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from genguard.data.builds import BUILD_INFO_FILE, MANIFEST_FILE, cached_build
from genguard.data.manifest import DataValidationError, image_schema, normalise_manifest
from genguard.families.t2i.shapes import ShapesWorld, render_rows, sample_rows
from genguard.io.atomic import atomic_dir, write_json_atomic
from genguard.progress import progress
from genguard.training import fingerprint

log = logging.getLogger(__name__)
BUILDER_VERSION = 1
CAPTION_SCHEMA = image_schema(
    "t2i_captions", {"caption": "str", "shape": "str", "colour": "str", "style": "str", "shape_word": "str"},
    group_column="shape", leakage_groups=("sha256",), sort_by=("split", "shape", "path"), label_values=None)


def world_from_params(params: dict[str, Any]) -> ShapesWorld:
    keys = {"image_size", "colours", "shapes", "styles", "size_range", "max_rotation_deg", "outline_width"}
    return ShapesWorld(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in params.items() if k in keys})


def _png_bytes(image: torch.Tensor) -> bytes:
    array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def build_captioned_set(out_dir: str | Path, world: ShapesWorld, counts: dict[str, int], seed: int
                        ) -> pd.DataFrame:
    """Render ``counts[split]`` captioned images per split (cached: an unchanged request reads the build)."""
    out_dir = Path(out_dir)
    key = fingerprint(BUILDER_VERSION, asdict(world), sorted(counts.items()), seed)
    cached = cached_build(out_dir, key, CAPTION_SCHEMA)
    if cached is not None:
        log.info("captioned set: cached build in %s (%d images)", out_dir, len(cached))
        return cached
    records = []
    with atomic_dir(out_dir) as staging:
        for offset, (split, count) in enumerate(sorted(counts.items())):
            rows = sample_rows(world, count, seed * 101 + offset)
            for start in progress(range(0, count, 256), desc=f"render {split}", unit="batch"):
                chunk = rows[start:start + 256]
                for index, (row, image) in enumerate(zip(chunk, render_rows(world, chunk)), start=start):
                    relative = Path(split, str(row["shape"]), str(row["style"]), f"{index:05d}_{row['colour']}.png")
                    payload = _png_bytes(image)
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    (staging / relative).write_bytes(payload)
                    records.append({
                        "path": str(out_dir / relative), "label": world.shapes.index(str(row["shape"])),
                        "split": split, "sha256": hashlib.sha256(payload).hexdigest(), "source": "shapes_world",
                        "licence": "generated (project)", "width": world.image_size, "height": world.image_size,
                        "caption": row["caption"], "shape": row["shape"], "colour": row["colour"],
                        "style": row["style"], "shape_word": row["shape_word"], "seed": row["seed"]})
        manifest = normalise_manifest(pd.DataFrame.from_records(records), CAPTION_SCHEMA)
        manifest.to_parquet(staging / MANIFEST_FILE, index=False)
        write_json_atomic(staging / BUILD_INFO_FILE, {"cache_key": key, "world": asdict(world), "counts": counts,
                                                      "seed": seed, "builder_version": BUILDER_VERSION})
    log.info("captioned set: built %d images in %s", len(manifest), out_dir)
    return manifest


def load_images(paths: Sequence[str]) -> torch.Tensor:
    """N x 3 x S x S in [0, 1]; a file that will not decode is named."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as handle:
                array = np.asarray(handle.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, ValueError) as error:
            raise DataValidationError(f"{path}: cannot decode the image ({error}); rebuild the captioned set "
                                      "(delete its folder) or fix the file") from error
        images.append(torch.from_numpy(array).permute(2, 0, 1))
    return torch.stack(images)


def check_prompts(prompts: Sequence[str], *, max_tokens: int, tokenize: Any, what: str) -> None:
    """Empty or over-long prompts fail before any training, every offender named at once."""
    problems = []
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{prompt!r}: empty; every prompt must name what to draw")
            continue
        length = len(tokenize(prompt))
        if length > max_tokens:
            problems.append(f"{prompt!r}: {length} tokens with start/end, the text encoder takes {max_tokens}; "
                            "shorten it")
    if problems:
        raise DataValidationError(f"{len(problems)} bad prompt(s) in {what}:\n  " + "\n  ".join(problems[:20]))


def check_concepts(concepts: dict[str, str], world: ShapesWorld, what: str) -> None:
    """A concept to erase, keep or trigger must be one the world draws (and the classifier can read)."""
    for attribute, concept in concepts.items():
        known = world.attributes.get(attribute)
        if known is None:
            raise DataValidationError(f"{what}: unknown attribute {attribute!r}; the world has "
                                      f"{sorted(world.attributes)}")
        if concept not in known:
            raise DataValidationError(f"{what}: concept {concept!r} is not in the vocabulary of {attribute} "
                                      f"{list(known)}; pick one of those, or add it to the world's config")
