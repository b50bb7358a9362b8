"""DGS-Net: the surgery removes the harmful component, is exact w.r.t. the paper's tensor-hook form,
leaves gradients alone when off, and never trains the frozen teacher."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from genguard.families.aigi.methods import build_detector
from genguard.training import TrainConfig, fit

TINY = {"name": "genguard-tiny-vit-32"}
SELECT = {"patch_size": 8, "grid": 4}


def _dgs(**options):
    torch.manual_seed(0)
    # LoRA dropout off: these tests compare two computations of the same gradients, pass by pass.
    options.setdefault("lora_dropout", 0.0)
    model = build_detector("dgs_net", backbone=TINY, patch_selection=SELECT, **options)
    # A non-trivial teacher probe and LoRA state, so every direction in the loss is non-zero.
    with torch.no_grad():
        model.teacher_head.weight.normal_()
        for parameter in model.lora_parameters:
            parameter.normal_(std=0.05)
    model.begin_stage("student", None)
    return model.train()


def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, 3, 32, 32, generator=generator), "label": torch.arange(n) % 2,
            "text_features": torch.randn(n, 64, generator=generator)}


def _engine_gradients(model, batch) -> dict[str, torch.Tensor]:
    """What the training loop does: one backward of ``training_loss`` (the surgery hook fires inside)."""
    model.zero_grad(set_to_none=True)
    loss, _ = model.training_loss(batch)
    loss.backward()
    assert model.gradient_hook() is None  # no second pass: ZeRO stages never see an edited parameter gradient
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _reference_gradients(model, batch, surgery: bool) -> dict[str, torch.Tensor]:
    """The published form: one backward of the full loss, surgery as a tensor hook on f_s."""
    model.zero_grad(set_to_none=True)
    target = batch["label"].float()
    student = model.encode(batch["image"])
    beneficial = model._beneficial_direction(batch["image"], target)
    harmful, loss_caption = model._harmful_direction(batch["text_features"], target)
    if surgery:
        student.register_hook(lambda g: g - (g * harmful).sum(1, keepdim=True) * harmful)
    loss = (F.binary_cross_entropy_with_logits(model.image_head(student).squeeze(-1), target) + loss_caption
            + model.config.lambda_align * (student * beneficial).sum(1).mean())
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def test_applied_feature_gradient_is_orthogonal_to_every_harmful_direction():
    model, batch = _dgs(), _batch()
    target = batch["label"].float()
    # the raw gradient at f_s, computed independently: d/df of BCE(h_i(f)) + lambda <f, G_b>
    features = model.encode(batch["image"]).detach().requires_grad_(True)
    beneficial = model._beneficial_direction(batch["image"], target)
    raw_loss = (F.binary_cross_entropy_with_logits(model.image_head(features).squeeze(-1), target)
                + model.config.lambda_align * (features * beneficial).sum(1).mean())
    (raw,) = torch.autograd.grad(raw_loss, features)
    harmful, _ = model._harmful_direction(batch["text_features"], target)
    model.zero_grad(set_to_none=True)
    loss, _ = model.training_loss(batch)
    loss.backward()
    applied = model.last_feature_gradient
    assert (raw * harmful).sum(1).abs().max() > 1e-6   # the raw gradient had a harmful component
    assert (applied * harmful).sum(1).abs().max() < 1e-5 * raw.norm(dim=1).max()
    # only that component went: the rest of the gradient is untouched
    assert torch.allclose(raw - applied, (raw * harmful).sum(1, keepdim=True) * harmful, atol=1e-8)


def test_harmful_directions_come_from_the_caption_head_weights():
    model, batch = _dgs(), _batch()
    harmful, _ = model._harmful_direction(batch["text_features"], batch["label"].float())
    w = model.caption_head.weight[0].detach()
    # (tolerance: u's denominator carries +1e-6 against a norm of ~0.03)
    reals, fakes = batch["label"] == 0, batch["label"] == 1
    assert torch.allclose(harmful[reals], F.normalize(F.relu(w), dim=0).expand(int(reals.sum()), -1), atol=1e-4)
    assert torch.allclose(harmful[fakes], F.normalize(F.relu(-w), dim=0).expand(int(fakes.sum()), -1), atol=1e-4)


def test_hook_seam_equals_the_papers_tensor_hook_with_surgery():
    model, batch = _dgs(), _batch()
    ours, reference = _engine_gradients(model, batch), _reference_gradients(model, batch, surgery=True)
    assert ours.keys() == reference.keys() and any("lora" in name for name in ours)
    for name in ours:
        assert torch.allclose(ours[name], reference[name], atol=1e-6), name


def test_surgery_off_leaves_the_gradients_of_a_plain_backward_untouched():
    model, batch = _dgs(surgery=False), _batch()
    ours, plain = _engine_gradients(model, batch), _reference_gradients(model, batch, surgery=False)
    for name in ours:
        assert torch.allclose(ours[name], plain[name], atol=1e-6), name
    with_surgery = _reference_gradients(model, batch, surgery=True)
    assert any(not torch.allclose(plain[n], with_surgery[n], atol=1e-6) for n in plain if "lora" in n)


class _Rows(Dataset):
    def __init__(self, batch):
        self.batch, self.labels = batch, batch["label"]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.batch.items()}


def test_frozen_teacher_never_changes_while_the_student_trains():
    torch.manual_seed(0)
    model = build_detector("dgs_net", backbone=TINY, patch_selection=SELECT, teacher_epochs=1)
    teacher_before = copy.deepcopy(model.teacher_encoder.state_dict())
    rows = _Rows(_batch(16))
    stages = model.training_stages()
    assert [s for s, _ in stages] == ["teacher", "student"]
    probes = {}
    for stage, overrides in stages:
        model.begin_stage(stage, rows)
        fit(model, rows, None, TrainConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-2, **overrides}))
        probes[stage] = model.teacher_head.weight.detach().clone()
    for name, tensor in model.teacher_encoder.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name
    assert torch.equal(probes["teacher"], probes["student"])  # the probe is frozen in stage 2 too
    assert all(not p.requires_grad for p in model.teacher_encoder.parameters())


def test_student_stage_learns_through_the_engine():
    model, rows = _dgs(), _Rows(_batch(16))
    lora_before = [p.detach().clone() for p in model.lora_parameters]
    result = fit(model, rows, None, TrainConfig(epochs=15, batch_size=16, lr=1e-2, optimizer="adam"))
    logs = result.history
    assert logs[-1]["train/bce_image"] < logs[0]["train/bce_image"]
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, model.lora_parameters, strict=True))


# --- tests that fail on a stub of the mechanism they name -------------------------------------------------


def test_beneficial_direction_and_alignment_loss_match_their_closed_forms():
    """G_b = min(dL_t/df_t, 0) for the teacher probe's mean BCE: (sigmoid(z) - y) w / B, negative part;
    L_align = mean_i <f_s,i, G_b,i> - computed here from the definitions, not the method's helpers."""
    model, batch = _dgs(), _batch()
    target = batch["label"].float()
    with torch.no_grad():
        teacher = model.teacher_encoder(batch["image"])
        w, b = model.teacher_head.weight[0], model.teacher_head.bias[0]
        gradient = (torch.sigmoid(teacher @ w + b) - target)[:, None] * w[None, :] / len(target)
        expected = torch.minimum(gradient, torch.zeros_like(gradient))
    beneficial = model._beneficial_direction(batch["image"], target)
    assert torch.allclose(beneficial, expected, atol=1e-7)
    assert (beneficial <= 0).all() and (beneficial < 0).any()  # the clamp keeps the negative part only
    _, logs = model.training_loss(batch)
    with torch.no_grad():
        student = model.encode(batch["image"])
    assert logs["align"] == pytest.approx(float((student * expected).sum(1).mean()), rel=1e-4, abs=1e-9)


def test_stage_one_trains_the_teacher_probe_and_nothing_else():
    torch.manual_seed(0)
    model = build_detector("dgs_net", backbone=TINY, patch_selection=SELECT, teacher_epochs=3)
    rows = _Rows(_batch(16))
    probe, head = model.teacher_head.weight.detach().clone(), model.image_head.weight.detach().clone()
    lora = [p.detach().clone() for p in model.lora_parameters]
    stage, overrides = model.training_stages()[0]
    assert stage == "teacher" and overrides["epochs"] == 3
    model.begin_stage(stage, rows)
    result = fit(model, rows, None, TrainConfig(**{"batch_size": 8, "lr": 0.05, **overrides}), show_progress=False)
    assert not torch.equal(model.teacher_head.weight, probe)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    assert torch.equal(model.image_head.weight, head)
    assert all(torch.equal(a, b) for a, b in zip(lora, model.lora_parameters, strict=True))


def test_a_student_without_a_trained_teacher_is_refused():
    with pytest.raises(ValueError, match="teacher_epochs must be >= 1"):
        build_detector("dgs_net", backbone=TINY, patch_selection=SELECT, teacher_epochs=0)
