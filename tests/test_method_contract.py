"""Every registered method of every family honours the one contract the core relies on:
built from its spec, one training step through the one loop, a save/load round trip that
reproduces its outputs, and the same seed giving the same result."""

import importlib

import pytest
import torch

from genguard.families import FAMILIES
from genguard.io.model_files import load_model_dir, save_model_dir
from genguard.registry import MODELS, build_model
from genguard.training import TrainConfig, fit

CASES = [(family, method) for family in FAMILIES
         for method in importlib.import_module(f"genguard.families.{family}").METHODS]


def _package(family):
    return importlib.import_module(f"genguard.families.{family}")


def _train_one_step_per_stage(model, rows, seed=0):
    for stage, overrides in model.training_stages():
        model.begin_stage(stage, rows)
        config = TrainConfig.from_dict({"batch_size": len(rows), "lr": 1e-2, "seed": seed,
                                        **{k: v for k, v in overrides.items() if k not in ("epochs", "steps")},
                                        "epochs": 1})
        result = fit(model, rows, None, config, show_progress=False)
        assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in result.history), (stage, result.history)
    return model


def _built(family, method, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(_package(family).examples.tiny_spec(method))


def test_every_family_method_is_registered_once():
    assert CASES, "no family registered any method"
    assert len({method for _, method in CASES}) == len(CASES)
    assert all(method in MODELS for _, method in CASES)


@pytest.mark.parametrize(("family", "method"), CASES)
def test_method_contract(family, method, tmp_path):
    examples = _package(family).examples
    model = _built(family, method)
    assert model.init_spec["family"] == family and model.init_spec["method"] == method
    rows = examples.example_dataset(model, n=8, seed=1)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}

    _train_one_step_per_stage(model, rows)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one training step changed no weight"

    model.eval()
    batch = {k: torch.stack([rows[i][k] for i in range(len(rows))]) for k in rows[0]}
    with torch.no_grad():
        outputs = model.predict_step(batch)
    save_model_dir(model, tmp_path / "model")
    loaded = load_model_dir(tmp_path / "model").model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.predict_step(batch), outputs, atol=1e-6)

    again = _train_one_step_per_stage(_built(family, method), rows)
    for key, value in again.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), f"same seed, different {key}"
