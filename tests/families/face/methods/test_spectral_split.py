"""The SVD split shared by Effort and MASM: exact at initialisation, principal part frozen, and the
orthogonality shortcut equal to the explicit full-basis computation."""

import pytest
import torch
from torch.nn.utils import parametrize

from genguard.families.face.methods import _vit, build_detector
from genguard.families.face.methods._spectral import SpectralResidual, basis_deviation_sq
from genguard.models.backbones import create_backbone

OPTIONS = {
    "effort": {"residual_rank": 3},
    "masm": {"subspaces": 2, "subspace_rank": 2, "mask_schedule": "none", "head_epochs": 0},
}


def _images(n=4, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _train(model, steps=3, lr=5e-2, weight_decay=1e-2):
    optimizer = torch.optim.AdamW(model.parameter_groups(lr, weight_decay))
    batch = {"image": _images(8, seed=1), "label": torch.arange(8) % 2}
    for _ in range(steps):
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_the_decomposed_model_reproduces_the_original_layers_at_initialisation(method, tiny_backbone):
    model = build_detector(method, backbone=tiny_backbone, **OPTIONS[method]).eval()
    original = create_backbone(tiny_backbone).eval()
    for block, reference in zip(_vit.transformer_blocks(model.backbone.visual),
                                _vit.transformer_blocks(original.visual), strict=True):
        assert parametrize.is_parametrized(block.attn, "in_proj_weight")
        assert parametrize.is_parametrized(block.attn.out_proj, "weight")
        torch.testing.assert_close(block.attn.in_proj_weight, reference.attn.in_proj_weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(block.attn.out_proj.weight, reference.attn.out_proj.weight, atol=1e-6, rtol=0)
        tokens = torch.randn(2, 5, block.attn.embed_dim)
        with torch.no_grad():
            torch.testing.assert_close(block(tokens), reference(tokens), atol=1e-5, rtol=0)
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(images), _vit.pooled_features(original.visual, images),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_the_principal_part_never_changes_during_training(method, tiny_backbone):
    model = build_detector(method, backbone=tiny_backbone, **OPTIONS[method])
    model.begin_stage("main", None)
    principal = {id(site): site.principal().detach().clone() for site in model.sites}
    factors = {id(site): site.split.u.detach().clone() for site in model.sites}
    assert not any(site.principal().requires_grad for site in model.sites)
    _train(model)
    for site in model.sites:
        assert torch.equal(site.principal(), principal[id(site)]), (site.layer, site.weight)
    assert any(not torch.equal(site.split.u, factors[id(site)]) for site in model.sites), "nothing trained"


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_folding_for_inference_keeps_the_outputs(method, tiny_backbone):
    model = build_detector(method, backbone=tiny_backbone, **OPTIONS[method])
    model.begin_stage("main", None)
    _train(model)
    model.eval()
    images = _images()
    with torch.no_grad():
        before = model(images)
        folded = model.prepare_for_inference()
        after = folded(images)
    assert not any(parametrize.is_parametrized(block.attn) for block in _vit.transformer_blocks(folded.backbone.visual))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_the_orthogonality_shortcut_equals_the_explicit_full_basis():
    """||[U_r | T]^T [U_r | T] - I||^2 computed with U_r explicitly, against the stored-tail shortcut."""
    torch.manual_seed(3)
    d, k, r = 12, 2, 2
    weight = torch.randn(d, d, dtype=torch.float64)
    split = SpectralResidual(weight, blocks=1, subspaces=k, rank=r)
    with torch.no_grad():
        split.u.add_(0.3 * torch.randn_like(split.u))  # rotate the trainable subspaces off their start
    u_full, _, _ = torch.linalg.svd(weight)
    principal = u_full[:, : d - k * r]
    full = torch.cat([principal, split.u_columns()[0]], dim=1)
    explicit = (full.T @ full - torch.eye(d, dtype=torch.float64)).pow(2).sum()
    shortcut = basis_deviation_sq(split.u_columns(), split.tail_u)[0]
    torch.testing.assert_close(shortcut, explicit, atol=1e-9, rtol=1e-9)
    assert explicit > 1e-2


def test_a_split_leaves_at_least_one_principal_direction():
    with pytest.raises(ValueError, match="principal"):
        SpectralResidual(torch.randn(8, 8), blocks=1, subspaces=4, rank=2)
