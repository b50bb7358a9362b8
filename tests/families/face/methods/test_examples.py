"""What the method contract test runs for every family, here for the face detectors (the contract test
reaches them once the family is listed): tiny specs, one training step per stage through the one loop,
a save/load round trip with equal outputs, the same seed giving the same weights."""

import pytest
import torch

from genguard.families.face import examples
from genguard.families.face.methods import DETECTORS, MODULE_FILES
from genguard.io.model_files import load_model_dir, save_model_dir
from genguard.registry import MODELS, build_model
from genguard.training import TrainConfig, fit


def _built(method, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(examples.tiny_spec(method))


def _one_step_per_stage(model, rows):
    for stage, overrides in model.training_stages():
        model.begin_stage(stage, rows)
        config = TrainConfig.from_dict({"batch_size": len(rows), "lr": 1e-2, "seed": 0,
                                        **{k: v for k, v in overrides.items() if k != "epochs"}, "epochs": 1})
        result = fit(model, rows, None, config, show_progress=False)
        assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in result.history)
    return model


def test_the_face_detectors_are_registered():
    assert DETECTORS == ("effort", "selop", "masm")
    assert all(name in MODELS for name in DETECTORS)
    assert MODULE_FILES == {"effort": "effort.py", "selop": "selop.py", "masm": "masm.py"}


@pytest.mark.parametrize("method", DETECTORS)
def test_the_method_contract(method, tmp_path):
    model = _built(method)
    assert model.init_spec["family"] == "face" and model.init_spec["method"] == method
    rows = examples.example_dataset(model, n=8, seed=1)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _one_step_per_stage(model, rows)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())

    model.eval()
    batch = {k: torch.stack([rows[i][k] for i in range(len(rows))]) for k in rows[0]}
    with torch.no_grad():
        outputs = model.predict_step(batch)
    assert outputs.shape == (len(rows),)
    save_model_dir(model, tmp_path / "model")
    loaded = load_model_dir(tmp_path / "model").model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.predict_step(batch), outputs, atol=1e-6)
        assert torch.allclose(loaded.prepare_for_inference().predict_step(batch), outputs, atol=1e-5)

    again = _one_step_per_stage(_built(method), rows)
    for key, value in again.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), f"same seed, different {key}"


def test_the_example_fakes_differ_learnably(tiny_backbone):
    model = _built("effort")
    rows = examples.example_dataset(model, n=16, seed=0)
    assert rows[0]["image"].shape == (3, model.backbone.image_size, model.backbone.image_size)
    centre = rows.images[:, :, 28:36, 28:36].mean((1, 2, 3))
    assert float(centre[rows.labels == 1].min()) > float(centre[rows.labels == 0].max())


def test_tiny_specs_are_only_for_face_detectors():
    with pytest.raises(KeyError, match="no tiny example"):
        examples.tiny_spec("univfd")
