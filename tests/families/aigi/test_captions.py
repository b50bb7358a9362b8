"""Captions: template captions describe the scene (not the artifacts); caption files resolve or fail loudly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genguard.families.aigi.captions import captions_for, template_caption
from genguard.data.manifest import DataValidationError


def _image(top, bottom, size=64):
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[: size // 2], array[size // 2:] = top, bottom
    return Image.fromarray(array)


def test_template_caption_names_brightness_and_layout():
    sky_over_grass = template_caption(_image((70, 120, 230), (40, 170, 60)))
    assert sky_over_grass == "a softly lit photo, blue above and green below"
    assert template_caption(_image((250, 250, 250), (245, 245, 245))) == "a bright photo, mostly white"
    assert template_caption(_image((10, 10, 10), (20, 20, 20))) == "a dark photo, mostly black"


def test_template_caption_ignores_fine_artifacts():
    rng = np.random.default_rng(0)
    clean = np.array(_image((70, 120, 230), (40, 170, 60)))
    noisy = np.clip(clean.astype(int) + rng.integers(-12, 13, clean.shape), 0, 255).astype(np.uint8)
    assert template_caption(Image.fromarray(noisy)) == template_caption(Image.fromarray(clean))
    assert template_caption(clean) == template_caption(Image.fromarray(clean))  # arrays work too


def _write(tmp_path, name, colours):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    _image(*colours).save(path)
    return str(path)


def test_captions_for_template_one_per_row(tmp_path):
    paths = [_write(tmp_path, "a.png", ((70, 120, 230), (40, 170, 60))),
             _write(tmp_path, "b.png", ((250, 250, 250), (250, 250, 250)))]
    frame = pd.DataFrame({"path": paths + paths[:1], "sha256": ["1", "2", "1"]})
    captions = captions_for(frame, {"kind": "template"})
    assert len(captions) == 3 and captions[0] == captions[2] != captions[1]


def test_caption_file_in_the_dgs_net_layout_resolves_relative_and_name_keys(tmp_path):
    root = tmp_path / "setting2"
    by_relative = _write(root, "train/car/0_real/x.png", ((0, 0, 255), (0, 0, 255)))
    by_name = _write(root, "train/car/1_fake/y.png", ((0, 0, 255), (0, 0, 255)))
    text = tmp_path / "setting2_text"
    text.mkdir()
    (text / "train.json").write_text(json.dumps({"train/car/0_real/x.png": "a car on a road", "y.png": "a red car"}))
    frame = pd.DataFrame({"path": [by_relative, by_name]})
    assert captions_for(frame, {"kind": "file", "path": str(text)}) == ["a car on a road", "a red car"]


def test_missing_captions_fail_naming_the_files(tmp_path):
    path = _write(tmp_path, "data/z.png", ((0, 0, 0), (0, 0, 0)))
    table = tmp_path / "captions.json"
    table.write_text(json.dumps({"other.png": "a cat"}))
    with pytest.raises(DataValidationError, match=r"(?s)1 image\(s\) have no caption.*z\.png.*captions.kind: template"):
        captions_for(pd.DataFrame({"path": [path]}), {"kind": "file", "path": str(table)})
    with pytest.raises(DataValidationError, match="not found"):
        captions_for(pd.DataFrame({"path": [path]}), {"kind": "file", "path": str(tmp_path / "nope.json")})
    with pytest.raises(ValueError, match="captions.kind"):
        captions_for(pd.DataFrame({"path": [path]}), {"kind": "blip"})
