"""Scientific regression test on the embedded default: a pretrained prior generalises, a scratch one does not.

The claim every AIGI method here rests on, measured on the dataset ``make run`` builds (train on
``gan_upsampler``, test on every family): frozen pretrained features + a linear probe rank held-out
generators' fakes above their reals; the same architecture without pretraining, probed the same way,
stays near chance. If a change breaks the prior (weights, preprocessing, pooling), this fails.
The default dataset is built where ``make run`` keeps it (``data.embedded.out_dir``) and reused when
its cache key matches (about 1.5 minutes to build on 2 cores, once).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from genguard.data.images import Preprocess, load_rgb
from genguard.families.aigi.embedded import build_default_aigi_dataset
from genguard.models.backbones import create_backbone
from genguard.models.lit import load_efficientnet_lite0
from genguard.pipelines.aigi.prior import alignment_rows, ensure_backbone_prior

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[3]
NAME = "genguard-lit-effnet-lite0"
TRAIN_FAMILY = "gan_upsampler"


@pytest.fixture(scope="module")
def default_world() -> tuple[pd.DataFrame, dict]:
    params = yaml.safe_load((ROOT / "conf" / "base" / "parameters.yml").read_text())
    embedded = params["data"]["embedded"]
    manifest = build_default_aigi_dataset(ROOT / embedded["out_dir"], embedded["config"],
                                          photo_root=ROOT / embedded["photo_root"], show_progress=False)
    return manifest, params["backbone_prior"]


@torch.no_grad()
def _pooled(trunk: torch.nn.Module, frame: pd.DataFrame, preprocess: Preprocess) -> np.ndarray:
    trunk.eval()
    rows = []
    for start in range(0, len(frame), 64):
        images = preprocess.batch([load_rgb(p) for p in frame["path"].iloc[start:start + 64]])
        rows.append(trunk.extract_features(images).mean(dim=(2, 3)))
    return torch.cat(rows).numpy()


def _held_out_ap(trunk: torch.nn.Module, manifest: pd.DataFrame) -> dict[str, float]:
    preprocess = Preprocess(image_size=96, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    train = manifest[(manifest["split"] == "train") & (manifest["generator"] == TRAIN_FAMILY)]
    test = manifest[manifest["split"] == "test"]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    probe.fit(_pooled(trunk, train, preprocess), train["label"].to_numpy())
    scores = probe.decision_function(_pooled(trunk, test, preprocess))
    return {family: average_precision_score(test["label"][test["generator"] == family],
                                            scores[(test["generator"] == family).to_numpy()])
            for family in sorted(set(test["generator"]) - {TRAIN_FAMILY})}


def test_pretrained_features_generalise_to_held_out_generators_and_scratch_ones_do_not(default_world):
    manifest, _ = default_world
    pretrained = _held_out_ap(create_backbone({"name": NAME}).visual.trunk, manifest)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        scratch_trunk = load_efficientnet_lite0(96)
        for module in scratch_trunk.modules():  # same architecture and size, no ImageNet weights
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    scratch = _held_out_ap(scratch_trunk, manifest)
    pretrained_mean, scratch_mean = float(np.mean(list(pretrained.values()))), float(np.mean(list(scratch.values())))
    print(f"held-out AP pretrained {pretrained} (mean {pretrained_mean:.3f}); scratch {scratch} "
          f"(mean {scratch_mean:.3f})")
    assert pretrained_mean >= 0.65
    assert pretrained_mean - scratch_mean >= 0.1


def test_aligned_pair_retrieves_its_training_captions_and_is_cached(default_world, tmp_path):
    manifest, params = default_world
    spec = {"name": NAME, "pretrained": str(tmp_path / "prior" / "prior.safetensors")}
    report = ensure_backbone_prior(manifest, spec, params)
    print({k: report[k] for k in ("retrieval_train", "retrieval_held_out", "retrieval_chance", "distinct_captions",
                                  "build_seconds")})
    assert report["built"] and report["distinct_captions"] > 50
    assert report["retrieval_train"] >= 0.5 and report["retrieval_train"] > 50 * report["retrieval_chance"]
    assert report["retrieval_held_out"] > 10 * report["retrieval_chance"]  # images the alignment never saw
    again = ensure_backbone_prior(manifest, spec, params)
    assert not again["built"] and again["key"] == report["key"]
    fewer = manifest.drop(manifest[(manifest["split"] == "train") & (manifest["label"] == 0)].index[:1])
    rebuilt = ensure_backbone_prior(fewer, spec, {**params, "align": {**params["align"], "steps": 5}})
    assert rebuilt["built"] and rebuilt["key"] != report["key"]  # other images: a new prior
    with pytest.raises(ValueError, match="not a genguard LiT prior"):
        (tmp_path / "user.safetensors").write_bytes(b"x")
        ensure_backbone_prior(manifest, {"name": NAME, "pretrained": str(tmp_path / "user.safetensors")}, params)


def test_the_prior_aligns_on_real_training_images_only_and_caps_big_folders(default_world):
    manifest, _ = default_world
    rows = alignment_rows(manifest)
    assert set(rows["split"]) == {"train"} and set(rows["label"]) == {0}  # never a fake, never val/test
    assert len(rows) == len(manifest[(manifest["split"] == "train") & (manifest["label"] == 0)])
    capped = alignment_rows(manifest, 50)
    assert len(capped) == 50 and capped["sha256"].tolist() == rows["sha256"].tolist()[:50]  # a fixed subset
