import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genguard.data.transforms import FeatureRows
from genguard.methods.base import Detector
from genguard.training.engine import TrainConfig, fit


class ToyDetector(Detector):
    """A linear detector on 2-d features: enough to test the loop, fast enough to run many times."""

    frozen_backbone = True

    def __init__(self):
        super().__init__({"method": "toy"})
        self.head = torch.nn.Linear(2, 1)

    def classify(self, features):
        return self.head(features).squeeze(-1)


def toy_data(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    features = torch.randn(n, 2, generator=g) + torch.stack([labels * 2.0, -labels * 1.0], 1)
    return FeatureRows(features, labels)


def test_loss_falls_and_val_auc_is_reported():
    model = ToyDetector()
    result = fit(model, toy_data(), toy_data(seed=1), TrainConfig(epochs=5, batch_size=16, lr=0.05))
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.history[-1]["val/auc"] > 0.9
    assert result.best["metric"] == "val/auc" and 1 <= result.best["epoch"] <= 5


def test_same_seed_same_weights_different_seed_different_weights():
    def run(seed):
        torch.manual_seed(123)  # the engine must not depend on the caller's RNG state
        model = ToyDetector()
        model.head.weight.data.fill_(0.1)
        fit(model, toy_data(), None, TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=seed))
        return model.head.weight.detach().clone()

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_gradient_hook_runs_between_backward_and_step():
    calls = []

    class Hooked(ToyDetector):
        def gradient_hook(self):
            def zero_bias_grad():
                calls.append(self.head.weight.grad is not None)
                self.head.bias.grad.zero_()
            return zero_bias_grad

    model = Hooked()
    bias = model.head.bias.detach().clone()
    fit(model, toy_data(32), None, TrainConfig(epochs=1, batch_size=8, lr=0.1))
    assert calls == [True] * 4
    assert torch.equal(model.head.bias.detach(), bias)  # the hook's edit reached the optimizer


def test_a_deferred_loss_returned_by_the_hook_is_back_propagated_before_the_step():
    class Deferred(ToyDetector):
        """Its loss stops at a detached copy of the logits; the hook sends twice the gradient on."""

        def training_loss(self, batch):
            logits = self.head(batch["features"]).squeeze(-1)
            self._pending = (logits, leaf := logits.detach().requires_grad_(True))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(leaf, batch["label"].float())
            return loss, {}

        def gradient_hook(self):
            def route():
                logits, leaf = self._pending
                return (logits * (2.0 * leaf.grad)).sum()
            return route

    def weights_after(model):
        model.head.weight.data.fill_(0.1)
        model.head.bias.data.zero_()
        fit(model, toy_data(32), None, TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=3))
        return model.head.weight.detach().clone()

    plain, deferred = weights_after(ToyDetector()), weights_after(Deferred())
    assert not torch.equal(plain, torch.full_like(plain, 0.1))
    # AdamW's first step moves each weight by -lr * sign(grad): equal when the routed gradient has the sign
    assert torch.allclose(deferred, plain, atol=1e-6)
    changed = Deferred()
    changed.gradient_hook = lambda: (lambda: None)  # hook that returns nothing: the head gets no gradient
    assert torch.equal(weights_after(changed), torch.full((1, 2), 0.1))


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_dict({"epochz": 3})


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from training.test_engine import ToyDetector, toy_data
    from genguard.training.engine import TrainConfig, fit
    from genguard.io.model_store import save_detector
    from safetensors.torch import save_file

    kill_after = int(sys.argv[2])
    class Killer:
        def on_epoch_end(self, epoch, metrics):
            if epoch == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, like an OOM kill or a power cut
    torch.manual_seed(0)
    model = ToyDetector()
    result = fit(model, toy_data(), toy_data(seed=1), TrainConfig(epochs=5, batch_size=16, lr=0.05, select_best=False),
                 checkpoint_dir=__import__("pathlib").Path(sys.argv[1]), callbacks=[Killer()])
    save_file({{"w": model.head.weight.detach().contiguous()}}, sys.argv[1] + "/final.safetensors")
    print("RESUMED_FROM", result.resumed_from_epoch)
""")


def test_killed_run_resumes_from_last_checkpoint_and_ends_identical(tmp_path):
    tests_dir = str(Path(__file__).parents[1])
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=tests_dir))
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), "3"],
                            capture_output=True, text=True)
    assert killed.returncode != 0  # SIGKILL during epoch 3's callback
    state = json.loads((tmp_path / "ckpt" / "last" / "state.json").read_text())
    assert state["epoch"] == 1  # epochs 1 and 2 (0-based 0, 1) were checkpointed
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), "-1"],
                             capture_output=True, text=True, check=True)
    assert "RESUMED_FROM 1" in resumed.stdout
    clean = subprocess.run([sys.executable, str(script), str(tmp_path / "clean"), "-1"],
                           capture_output=True, text=True, check=True)
    assert "RESUMED_FROM None" in clean.stdout
    resumed_w = load_file(str(tmp_path / "ckpt" / "final.safetensors"))["w"]
    clean_w = load_file(str(tmp_path / "clean" / "final.safetensors"))["w"]
    assert torch.equal(resumed_w, clean_w)
