import logging

import pytest
import torch

from genguard.families.face.methods import build_detector


def test_effort_trains_only_the_residual_subspaces_and_the_head(tiny_backbone):
    model = build_detector("effort", backbone=tiny_backbone, residual_rank=2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all(name.startswith("head.") or name.rsplit(".", 1)[-1] in ("u", "s", "v") for name in trainable)
    # 2 blocks x (q, k, v, out) x rank 2 x (64 + 1 + 64) + head
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 8 * 2 * 129 + 65


def test_the_regulariser_is_zero_at_initialisation_and_grows_when_the_residual_drifts(tiny_backbone):
    model = build_detector("effort", backbone=tiny_backbone, residual_rank=2)
    with torch.no_grad():
        orthogonality, norm = model.regulariser()
    assert float(orthogonality) < 1e-3 and float(norm) < 1e-4
    with torch.no_grad():
        for site in model.sites:
            site.split.u.mul_(1.5)
            site.split.s.mul_(3.0)
        orthogonality, norm = model.regulariser()
    assert float(orthogonality) > 0.1 and float(norm) > 1e-3


def test_lambda_zero_is_the_released_code_cross_entropy_only(tiny_backbone):
    model = build_detector("effort", backbone=tiny_backbone, lambda_reg=0.0)
    batch = {"image": torch.randn(4, 3, 64, 64), "label": torch.tensor([0, 1, 0, 1])}
    loss, logs = model.training_loss(batch)
    assert set(logs) == {"bce"} and float(loss.detach()) == pytest.approx(logs["bce"])


def test_masm_with_one_subspace_no_mask_and_no_constraints_is_effort(tiny_backbone):
    """The review's regression: MASM(K=1, no mask, lambdas 0, same weight decay) = Effort(rank r_a)."""
    batch = {"image": torch.randn(8, 3, 64, 64), "label": torch.arange(8) % 2}

    def trained(method, **options):
        torch.manual_seed(7)
        model = build_detector(method, backbone=tiny_backbone, **options)
        model.begin_stage("main", None)
        optimizer = torch.optim.SGD(model.parameter_groups(0.1, 0.0))
        for _ in range(2):
            loss, _ = model.training_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return model.eval()(batch["image"])

    effort = trained("effort", residual_rank=2, lambda_reg=0.0)
    masm = trained("masm", subspaces=1, subspace_rank=2, mask_schedule="none", head_epochs=0,
                   lambda_orth=0.0, lambda_spec=0.0)
    torch.testing.assert_close(masm, effort, atol=1e-6, rtol=0)


def test_the_trainable_count_is_logged(tiny_backbone, caplog):
    with caplog.at_level(logging.INFO, logger="genguard.families.face.methods.effort"):
        build_detector("effort", backbone=tiny_backbone, residual_rank=1)
    assert "effort: 1097 trainable parameters" in caplog.text  # 8 x 129 + 65


def test_unknown_options_are_named(tiny_backbone):
    with pytest.raises(ValueError, match="residual_rnak"):
        build_detector("effort", backbone=tiny_backbone, residual_rnak=2)
