"""SeLop: the spurious basis stays orthonormal, the classifier never sees the spurious subspace, only
the declared parameters train, and the basis starts at the data's top principal directions."""

import logging

import pytest
import torch
from torch.utils.data import Dataset

from genguard.families.face.examples import example_dataset
from genguard.families.face.methods import build_detector
from genguard.families.face.methods.selop import InterventionBlock

LAYER = {"variant": "layer", "rank": 4, "blocks": [0, 1], "init_samples": 8, "init_batch_size": 4}
FEATURE = {"variant": "feature", "rank": 4, "adapter_rank": 8, "init_samples": 8, "init_batch_size": 4}
VARIANTS = {"layer": LAYER, "feature": FEATURE}


def _trained(backbone, options, steps=4, lr=0.2):
    model = build_detector("selop", backbone=backbone, **options)
    rows = example_dataset(model, n=8, seed=1)
    model.begin_stage("main", rows)
    model.train()
    batch = {"image": rows.images, "label": rows.labels}
    optimizer = torch.optim.AdamW(model.parameter_groups(lr, 0.0))
    for _ in range(steps):
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), batch


def _eye(r):
    return torch.eye(r)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("basis_training", ["ce+rec", "rec", "ce"])
def test_the_spurious_basis_stays_orthonormal_after_optimiser_steps(variant, basis_training, tiny_backbone):
    model = build_detector("selop", backbone=tiny_backbone, **VARIANTS[variant], basis_training=basis_training)
    start = [raw.detach().clone() for raw in (s.raw_basis for s in model.subspace_modules())]
    model, _ = _trained(tiny_backbone, {**VARIANTS[variant], "basis_training": basis_training})
    raws = [s.raw_basis.detach() for s in model.subspace_modules()]
    assert any(not torch.equal(a, b) for a, b in zip(raws, start, strict=True))
    for q in (basis.detach() for basis in model.spurious_bases()):
        torch.testing.assert_close(q.T @ q, _eye(q.shape[1]), atol=2e-5, rtol=0)
    # ...while the raw parameters themselves have left the Stiefel manifold: the QR does the work
    assert any(float((a.transpose(-1, -2) @ a - _eye(a.shape[-1])).abs().max()) > 1e-3 for a in raws)


def test_the_feature_classifier_input_has_no_spurious_component(tiny_backbone):
    model, batch = _trained(tiny_backbone, FEATURE)
    assert float(model.adapter_up.weight.detach().abs().max()) > 0  # the complement branch is active
    captured = {}
    model.head.register_forward_pre_hook(lambda module, args: captured.update(h=args[0]))
    with torch.no_grad():
        model(batch["image"])
        (q,) = model.spurious_bases()
    h = captured["h"]
    assert float((h @ q).abs().max()) < 1e-5 * float(h.abs().max())


def test_every_layer_site_leaves_no_component_in_its_spurious_subspace(tiny_backbone):
    model, batch = _trained(tiny_backbone, LAYER)
    outputs = []

    def spy(subspaces):
        forward = subspaces.forward

        def wrapped(x, index, centred=False):
            out = forward(x, index, centred)
            outputs.append((out, subspaces.bases()[index], subspaces.mean[index]))
            return out

        return wrapped

    for subspaces in model.subspace_modules():
        subspaces.forward = spy(subspaces)
    with torch.no_grad():
        model(batch["image"])
    assert all(isinstance(model.backbone.visual.transformer.resblocks[i], InterventionBlock) for i in (0, 1))
    assert len(outputs) == 4  # 2 blocks x 2 residual additions
    for out, q, mean in outputs:
        component = (out - mean) @ q
        assert float(component.abs().max()) < 1e-4 * float(out.abs().max())


@pytest.mark.parametrize(("variant", "basis_training"),
                         [("layer", "ce+rec"), ("layer", "fixed"), ("feature", "rec"), ("feature", "fixed")])
def test_only_the_declared_parameters_require_grad_and_change(variant, basis_training, tiny_backbone):
    options = {**VARIANTS[variant], "basis_training": basis_training}
    model = build_detector("selop", backbone=tiny_backbone, **options)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == model.declared_trainable()
    expected = {"head.weight", "head.bias"}
    if variant == "feature":
        expected |= {"adapter_down.weight", "adapter_up.weight"}
    if basis_training != "fixed":
        expected |= ({"spurious.raw_basis"} if variant == "feature" else
                     {f"backbone.clip.visual.transformer.resblocks.{i}.spurious.raw_basis" for i in (0, 1)})
    assert set(trainable) == expected
    torch.manual_seed(0)
    rows = example_dataset(model, n=8, seed=1)
    model.begin_stage("main", rows)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = model
    optimizer = torch.optim.AdamW(trained.parameter_groups(0.1, 0.0))
    loss, _ = trained.training_loss({"image": rows.images, "label": rows.labels})
    loss.backward()
    optimizer.step()
    changed = {k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])}
    assert changed <= expected and "head.weight" in changed


def test_the_basis_starts_at_the_top_principal_directions(tiny_backbone):
    """Feature rows (as the pipeline caches them) with one planted dominant direction."""
    model = build_detector("selop", backbone=tiny_backbone, **{**FEATURE, "rank": 2, "init_samples": 256})
    width = model.head.in_features
    generator = torch.Generator().manual_seed(0)
    planted = torch.nn.functional.normalize(torch.randn(width, generator=generator), dim=0)
    second = torch.nn.functional.normalize(torch.randn(width, generator=generator), dim=0)
    second = torch.nn.functional.normalize(second - (second @ planted) * planted, dim=0)
    offset = 3.0 * torch.ones(width)

    class Features(Dataset):
        def __init__(self):
            noise = 0.05 * torch.randn(256, width, generator=generator)
            a, b = torch.randn(256, 1, generator=generator), torch.randn(256, 1, generator=generator)
            self.rows = offset + 4.0 * a * planted + 2.0 * b * second + noise

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, index):
            return {"features": self.rows[index], "label": torch.tensor(index % 2)}

    model.begin_stage("main", Features())
    (q,) = (basis.detach() for basis in model.spurious_bases())
    assert abs(float(q[:, 0] @ planted)) > 0.99 and abs(float(q[:, 1] @ second)) > 0.99
    assert torch.allclose(model.spurious.mean[0], offset, atol=0.5)


def test_the_trainable_count_is_logged_and_the_budget_enforced(tiny_backbone, caplog):
    with caplog.at_level(logging.INFO, logger="genguard.families.face.methods.selop"):
        build_detector("selop", backbone=tiny_backbone, **LAYER, budget=[1000, 1100])
    assert "selop (layer variant): 1089 trainable parameters" in caplog.text  # 4 sites x 64 x 4 + 65
    with pytest.raises(ValueError, match="budget"):
        build_detector("selop", backbone=tiny_backbone, **LAYER, budget=[390000, 430000])


def test_an_initialised_model_is_not_initialised_again_and_stores_its_centres(tiny_backbone):
    model, _ = _trained(tiny_backbone, LAYER, steps=1)
    stored = model.storable_state_dict()
    assert any(k.endswith("spurious.mean") for k in stored) and any(k.endswith("spurious.calibrated") for k in stored)
    again = build_detector("selop", backbone=tiny_backbone, **LAYER)
    again.load_state_dict(model.state_dict())

    class Unreadable(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            raise AssertionError("an initialised model must not read data again")

    again.begin_stage("main", Unreadable())
