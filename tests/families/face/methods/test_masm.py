"""MASM: the gradient mask freezes exactly the units it names, is chosen from gradient statistics,
survives checkpoints, and the constraints are zero at initialisation."""

import pytest
import torch
from torch.utils.data import Dataset

from genguard.families.face.examples import example_dataset
from genguard.families.face.methods import build_detector

TINY = {"subspaces": 2, "subspace_rank": 2, "probe_batches": 2, "probe_batch_size": 4}


def _masm(backbone, **options):
    return build_detector("masm", backbone=backbone, **{**TINY, **options})


def _steps(model, optimizer, batch, steps=3):
    for _ in range(steps):
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _batch(rows):
    return {"image": torch.stack([rows[i]["image"] for i in range(len(rows))]), "label": rows.labels}


def _factors(model):
    return [{name: getattr(site.split, name).detach().clone() for name in ("u", "s", "v")} for site in model.sites]


@pytest.mark.parametrize("unit", ["block", "linear", "subspace"])
def test_the_probe_mask_freezes_exactly_the_units_it_says(unit, tiny_backbone):
    model = _masm(tiny_backbone, mask_unit=unit, select_ratio=0.5)
    rows = example_dataset(model, n=8, seed=1)
    model.begin_stage("head", rows)
    model.begin_stage("main", rows)
    learns = model.unit_mask()
    assert 0 < sum(learns.values()) < len(learns)
    before = _factors(model)
    optimizer = torch.optim.AdamW(model.parameter_groups(5e-2, 0.1))  # decay on the head only
    _steps(model, optimizer, _batch(rows))
    for site, state, start in zip(model.sites, model.learning_state, before, strict=True):
        for name, value in start.items():
            now = getattr(site.split, name).detach()
            for j in range(site.split.blocks):
                for k in range(site.split.subspaces):
                    changed = not torch.equal(now[j, k], value[j, k])
                    assert changed == bool(state.mask[j, k]), (site.layer, site.weight, j, k, name)


def test_the_probe_lets_the_highest_gradient_snr_units_learn(tiny_backbone):
    model = _masm(tiny_backbone, mask_unit="linear", select_ratio=0.25)
    rows = example_dataset(model, n=8, seed=1)
    model.begin_stage("head", rows)
    bias, variance = model.gradient_statistics(rows)
    snr = bias / (variance + 1e-12)
    model.begin_stage("main", rows)
    learning = [name for name, on in model.unit_mask().items() if on]
    assert sorted(learning) == sorted(model.unit_names[i] for i in torch.topk(snr, 2).indices.tolist())


def test_the_dynamic_mask_follows_the_learning_state(tiny_backbone):
    """Low SNR or a dominant share of the mean gradient -> masked; the rest learns."""
    model = _masm(tiny_backbone, mask_schedule="dynamic", mask_unit="linear", head_epochs=0,
                  snr_floor=0.5, share_cap=0.5, ema_beta=0.0)
    model.begin_stage("main", None)
    model.ema_steps.fill_(1.0)
    with torch.no_grad():
        for index, state in enumerate(model.learning_state):
            for name in ("u", "s", "v"):
                getattr(state, f"mean_{name}").fill_(1e-3)
            state.variance.fill_(1e-6)       # SNR well above the floor...
        model.learning_state[0].variance[0].fill_(1.0)      # ...but block 0's q: noisy
        model.learning_state[1].mean_u[0].fill_(1.0)        # block 0's out: dominates the update norm
    learning = dict(zip(model.unit_names, model.update_dynamic_mask().tolist(), strict=True))
    assert learning.pop("block0.q") is False and learning.pop("block0.out") is False
    assert all(learning.values())


def test_the_dynamic_schedule_collects_gradients_and_re_masks_every_window(tiny_backbone):
    model = _masm(tiny_backbone, mask_schedule="dynamic", mask_unit="subspace", head_epochs=0,
                  update_every=2, snr_floor=10.0)  # a high floor: some units must be masked at the update
    rows = example_dataset(model, n=8, seed=1)
    model.begin_stage("main", rows)
    model.train()
    optimizer = torch.optim.SGD(model.parameter_groups(1e-2, 0.0))
    _steps(model, optimizer, _batch(rows), steps=3)  # folds after steps 1, 2 -> update at the 2nd fold
    assert int(model.ema_steps.item()) == 2
    assert any(float(state.mean_u.abs().sum()) > 0 for state in model.learning_state)
    learns = model.unit_mask()
    assert 0 < sum(learns.values()) < len(learns)
    before = _factors(model)                         # from here SGD (no momentum): masked units stay put
    loss, _ = model.training_loss(_batch(rows))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for site, state, start in zip(model.sites, model.learning_state, before, strict=True):
        for j in range(site.split.blocks):
            for k in range(site.split.subspaces):
                if not bool(state.mask[j, k]):
                    assert torch.equal(site.split.u[j, k], start["u"][j, k])


def test_the_mask_is_in_the_state_dict_and_a_probed_model_is_not_probed_again(tiny_backbone):
    model = _masm(tiny_backbone, mask_unit="linear", select_ratio=0.5)
    rows = example_dataset(model, n=8, seed=1)
    model.begin_stage("main", rows)
    again = _masm(tiny_backbone, mask_unit="linear", select_ratio=0.5)
    again.load_state_dict(model.state_dict())

    class Unreadable(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            raise AssertionError("a probed model must not read data again")

    again.begin_stage("main", Unreadable())
    assert again.unit_mask() == model.unit_mask()


def test_the_head_stage_trains_the_head_alone(tiny_backbone):
    model = _masm(tiny_backbone)
    assert [name for name, _ in model.training_stages()] == ["head", "main"]
    model.begin_stage("head", None)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]


def test_the_constraints_are_zero_at_initialisation_and_grow_when_subspaces_overlap(tiny_backbone):
    model = _masm(tiny_backbone, mask_schedule="none", head_epochs=0)
    with torch.no_grad():
        orthogonality, spectral = model.constraints()
    assert float(orthogonality) < 1e-5 and float(spectral) < 1e-8  # float32 rounding
    with torch.no_grad():
        for site in model.sites:
            site.split.u[:, 1] = site.split.u[:, 0]  # subspace 2 = subspace 1: redundant
            site.split.s.mul_(2.0)
        orthogonality, spectral = model.constraints()
    assert float(orthogonality) > 1.0 and float(spectral) > 1e-3


def test_the_masm_options_are_checked(tiny_backbone):
    with pytest.raises(ValueError, match="mask_schedule"):
        _masm(tiny_backbone, mask_schedule="sometimes")
    with pytest.raises(ValueError, match="probe_sise"):
        _masm(tiny_backbone, probe_sise=3)
