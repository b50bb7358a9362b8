"""DGS-Net: the surgery removes the harmful component, is exact w.r.t. the paper's tensor-hook form,
leaves gradients alone when off, and never trains the frozen teacher."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from genguard.families.aigi.methods import build_detector
from genguard.training import TrainConfig, fit

TINY = {"name": "genguard-tiny-vit-32"}
SELECT = {"patch_size": 8, "grid": 4}


def _dgs(**options):
    torch.manual_seed(0)
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
    """What the engine does: backward(loss), then back-propagate whatever the hook returns."""
    model.zero_grad(set_to_none=True)
    loss, _ = model.training_loss(batch)
    loss.backward()
    deferred = model.gradient_hook()()
    if deferred is not None:
        deferred.backward()
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
    model.zero_grad(set_to_none=True)
    loss, _ = model.training_loss(batch)
    loss.backward()
    raw = model._pending[1].grad.clone()
    harmful, _ = model._harmful_direction(batch["text_features"], batch["label"].float())
    model.gradient_hook()()
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
