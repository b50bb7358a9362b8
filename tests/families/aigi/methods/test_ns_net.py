"""NS-Net: the null-space projection removes the semantic basis, the basis matters, SupCon works."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genguard.data.images import Preprocess
from genguard.families.aigi.inference import load_detector
from genguard.io.model_files import save_model_dir
from genguard.families.aigi.methods import build_detector
from genguard.families.aigi.methods.ns_net import null_space_project, supervised_contrastive_loss

TINY = {"name": "genguard-tiny-vit-32"}
SELECT = {"patch_size": 8, "grid": 4}


def _ns_net(**options):
    torch.manual_seed(0)
    return build_detector("ns_net", backbone=TINY, patch_selection=SELECT, **options)


def test_per_row_projection_has_no_component_along_each_caption():
    features, text = torch.randn(16, 64), torch.randn(16, 64) * 5
    projected = null_space_project(features, text, per_row=True)
    along = (projected * F.normalize(text, dim=-1)).sum(1)
    assert along.abs().max() < 1e-5
    assert (features * F.normalize(text, dim=-1)).sum(1).abs().min() > 1e-3  # there was something to remove
    # idempotent, and the orthogonal part of v is left exactly as it was
    assert torch.allclose(null_space_project(projected, text, per_row=True), projected, atol=1e-5)
    assert torch.allclose(projected, features - (features * F.normalize(text, dim=-1)).sum(1, keepdim=True)
                          * F.normalize(text, dim=-1), atol=1e-5)


def test_shared_subspace_projection_matches_the_closed_form():
    features, basis = torch.randn(10, 64, dtype=torch.float64), torch.randn(5, 64, dtype=torch.float64)
    projected = null_space_project(features, basis)
    assert (projected @ basis.T).abs().max() < 1e-9
    closed_form = torch.eye(64, dtype=torch.float64) - basis.T @ torch.linalg.inv(basis @ basis.T) @ basis
    assert torch.allclose(projected, features @ closed_form.T, atol=1e-9)


def test_changing_the_semantic_basis_changes_the_logits():
    model = _ns_net().eval()
    features = torch.randn(6, 64)
    text_a, text_b = torch.randn(6, 64), torch.randn(6, 64)
    with torch.no_grad():
        logits_a, logits_b = model.classify(features, text_a), model.classify(features, text_b)
        logits_scaled = model.classify(features, 3.0 * text_a)
    assert (logits_a - logits_b).abs().max() > 1e-4
    assert torch.allclose(logits_a, logits_scaled, atol=1e-5)  # a subspace, not a vector: scale-free


def test_model_decouples_its_own_features_from_the_caption():
    model = _ns_net().eval()
    images, text = torch.randn(4, 3, 32, 32), torch.randn(4, 64)
    with torch.no_grad():
        decoupled = model.decouple(model.encode(images), text)
    assert ((decoupled * F.normalize(text, dim=-1)).sum(1)).abs().max() < 1e-5


def test_global_svd_basis_spans_the_training_captions_and_survives_save_load(tmp_path):
    model = _ns_net(ns_mode="global_svd")
    subspace = torch.randn(3, 64)
    captions = torch.randn(40, 3) @ subspace  # 40 captions spanning a 3-d subspace
    basis = model.fit_semantic_basis(captions)
    assert basis.shape == (3, 64)
    assert (null_space_project(captions, basis)).abs().max() < 1e-4
    features = torch.randn(5, 64)
    with torch.no_grad():
        decoupled = model.decouple(features, None)
    assert (decoupled @ subspace.T).abs().max() < 1e-4
    preprocess = Preprocess(image_size=32, patch_selection=SELECT)
    save_model_dir(model, tmp_path / "ns", extra={"preprocess": preprocess.to_dict()})
    loaded = load_detector(tmp_path / "ns")
    assert torch.allclose(loaded.model.semantic_basis, basis)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model(images), model.eval()(images), atol=1e-5)


def test_hidden_layer_classifier_also_sees_only_the_decoupled_feature():
    model = _ns_net(classify_on="hidden").eval()
    features, text = torch.randn(4, 64), torch.randn(4, 64)
    along = F.normalize(text, dim=-1) * 5.0  # adding caption directions must not move the logits
    with torch.no_grad():
        assert torch.allclose(model.classify(features, text), model.classify(features + along, text), atol=1e-5)
    assert model.head.in_features == model.config.proj_hidden


def test_per_sample_mode_refuses_to_classify_without_captions():
    with pytest.raises(ValueError, match="text_features"):
        _ns_net().classify(torch.randn(2, 64))


def test_supcon_prefers_label_clusters_and_skips_lonely_anchors():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = F.normalize(torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3) + 0.01 * torch.randn(6, 2), dim=-1)
    mixed = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 3), dim=-1)
    assert supervised_contrastive_loss(clustered, labels, 0.07) < supervised_contrastive_loss(mixed, labels, 0.07)
    lonely = supervised_contrastive_loss(clustered, torch.tensor([0, 0, 0, 0, 0, 1]), 0.07)
    assert torch.isfinite(lonely)


def test_training_loss_falls_on_a_learnable_task():
    model = _ns_net(lora_rank=0, proj_hidden=32, proj_dim=16)  # frozen encoder: train on features
    assert model.frozen_backbone
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    direction = torch.randn(64, generator=generator)
    features = torch.randn(64, 64, generator=generator) + 2.0 * labels[:, None].float() * direction
    text = torch.randn(64, 64, generator=generator)
    batch = {"features": features, "label": labels, "text_features": text}
    optimizer = torch.optim.Adam(model.parameter_groups(1e-2, 0.0)[0]["params"], lr=1e-2)
    first = None
    for _ in range(60):
        loss, logs = model.training_loss(batch)
        first = first if first is not None else logs
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logs["bce"] < 0.5 * first["bce"]
    # SupCon's floor with 31 positives among 63 others is log(31) ~ 3.43: it must get close to it
    assert logs["supcon"] < first["supcon"] - 2.0 and logs["supcon"] < 3.6


# --- tests that fail on a stub of the mechanism they name -------------------------------------------------


def test_lora_is_really_applied_to_the_image_tower():
    model = _ns_net(lora_rank=4).train()
    lora = [(name, p) for name, p in model.named_parameters() if "lora" in name]
    assert lora and all(p.requires_grad for _, p in lora)
    assert not any(p.requires_grad for name, p in model.backbone.named_parameters() if "lora" not in name)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model.encode(images).clone()
        for name, parameter in lora:
            if "lora_b" in name or name.endswith("B"):
                parameter.normal_(std=0.1)
        after = model.encode(images)
    assert (before - after).abs().max() > 1e-4  # the adapters change the features the detector sees


def test_bce_is_trained_on_the_decoupled_feature_not_the_raw_one():
    model = _ns_net(lora_rank=0).train()
    features, text = torch.randn(8, 64), torch.randn(8, 64)
    labels = torch.arange(8) % 2
    _, logs = model.training_loss({"features": features, "label": labels, "text_features": text})
    decoupled = null_space_project(features, text, per_row=True)
    expected = F.binary_cross_entropy_with_logits(model.head(decoupled).squeeze(-1), labels.float())
    raw = F.binary_cross_entropy_with_logits(model.head(features).squeeze(-1), labels.float())
    assert logs["bce"] == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(raw) - float(expected)) > 1e-4  # so a stub classifying raw features is caught


def test_global_svd_rank_is_capped_and_leaves_a_null_space():
    """Many captions span the whole width: the cap keeps max_semantic_fraction of it (here 32 of 64)."""
    model = _ns_net(ns_mode="global_svd")
    captions = torch.randn(500, 64)  # numerically full rank
    basis = model.fit_semantic_basis(captions)
    assert model.semantic_fit == {"numerical_rank": 64, "kept_rank": 32, "null_dims": 32, "width": 64}
    assert basis.shape == (32, 64)
    explicit = _ns_net(ns_mode="global_svd", semantic_rank=10)
    assert explicit.fit_semantic_basis(captions).shape == (10, 64)
    greedy = _ns_net(ns_mode="global_svd", semantic_rank=60)
    with pytest.raises(ValueError, match="leaving 4 < min_null_dims=16"):
        greedy.fit_semantic_basis(captions)
