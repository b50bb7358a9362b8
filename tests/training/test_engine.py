import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genguard.data.loaders import epoch_generator
from genguard.evaluation.evaluators import BinaryEvaluator
from genguard.training import TrainConfig, fit
from genguard.training.batches import epoch_order, epoch_steps

sys.path.insert(0, str(Path(__file__).parent))
from toy import ToyClassifier, toy_data  # noqa: E402


def test_loss_falls_and_val_auc_is_reported():
    model = ToyClassifier()
    result = fit(model, toy_data(), toy_data(seed=1), TrainConfig(epochs=5, batch_size=16, lr=0.05),
                 evaluator=BinaryEvaluator())
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.history[-1]["val/auc"] > 0.9
    assert result.best["metric"] == "val/auc" and result.best["mode"] == "max" and 1 <= result.best["epoch"] <= 5


def test_a_run_without_validation_monitors_train_loss_and_records_no_val_metric():
    model = ToyClassifier()
    result = fit(model, toy_data(), None, TrainConfig(epochs=3, batch_size=16, lr=0.05), evaluator=BinaryEvaluator())
    assert result.best["metric"] == "train/loss" and result.best["mode"] == "min"
    assert not any(key.startswith("val/") for record in result.history for key in record)
    assert result.best["value"] == min(h["train/loss"] for h in result.history)


def test_monitor_direction_min_picks_the_lowest_validation_loss(tmp_path):
    model = ToyClassifier()
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, monitor="loss")  # BinaryEvaluator says loss is "min"
    result = fit(model, toy_data(), toy_data(seed=1), cfg, evaluator=BinaryEvaluator())
    losses = [h["val/loss"] for h in result.history]
    assert result.best["mode"] == "min" and result.best["value"] == min(losses)
    with pytest.raises(ValueError, match="not_a_metric"):
        fit(ToyClassifier(), toy_data(), toy_data(seed=1), TrainConfig(epochs=1, monitor="not_a_metric"),
            evaluator=BinaryEvaluator())


def test_select_best_restores_the_best_rounds_weights(tmp_path):
    class Worsening(ToyClassifier):
        """Learns in round 1, then is sabotaged: the final weights are worse than the best round's."""

        def training_loss(self, batch):
            loss, logs = super().training_loss(batch)
            return (loss if self.training_round == 0 else -loss), logs

    model = Worsening()
    rounds = []

    class Counter:
        def on_epoch_end(self, epoch, metrics):
            rounds.append(epoch)
            model.training_round = epoch

    model.training_round = 0
    result = fit(model, toy_data(), toy_data(seed=1), TrainConfig(epochs=3, batch_size=16, lr=0.1, monitor="loss"),
                 evaluator=BinaryEvaluator(), callbacks=[Counter()], checkpoint_dir=tmp_path)
    assert result.best["epoch"] == 1 and result.history[-1]["val/loss"] > result.best["value"]
    best = load_file(str(tmp_path / "best" / "model.safetensors"))
    assert torch.equal(model.head.weight.detach(), best["head.weight"])


def test_same_seed_same_weights_different_seed_different_weights():
    def run(seed):
        torch.manual_seed(123)  # the loop must not depend on the caller's RNG state
        model = ToyClassifier()
        model.head.weight.data.fill_(0.1)
        fit(model, toy_data(), None, TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=seed))
        return model.head.weight.detach().clone()

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_the_callers_global_rng_is_left_as_it_was():
    model = ToyClassifier()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    fit(model, toy_data(32), None, TrainConfig(epochs=1, batch_size=8, lr=0.1))
    assert torch.equal(torch.rand(3), expected)


def test_epoch_order_matches_the_batches_of_earlier_genguard_runs():
    """Runs made before the loop planned its own batches reproduce: same seed, same batches. That loop
    iterated a seeded shuffling DataLoader through tqdm.auto (whose asyncio wrapper opens it twice)."""
    from tqdm.asyncio import tqdm_asyncio

    data = toy_data(37)
    loader = torch.utils.data.DataLoader(data, batch_size=5, shuffle=True, generator=epoch_generator(3, 2))
    expected = [int(i) for batch in tqdm_asyncio(loader, disable=True) for i in batch["index"]]
    assert epoch_order(37, seed=3, epoch=2) == expected


def test_micro_batches_of_ranks_and_accumulation_cover_each_global_batch_once():
    cfg = TrainConfig(epochs=1, batch_size=8, grad_accum_steps=2)
    single = epoch_steps(32, cfg, seed=0, epoch=0)
    ranks = [epoch_steps(32, cfg, seed=0, epoch=0, world=2, rank=r) for r in range(2)]
    for step, (one, two) in enumerate(zip(*ranks, strict=True)):
        rows = sorted(i for micro in single[step].micro_batches for i in micro)
        assert sorted(i for micro in one.micro_batches + two.micro_batches for i in micro) == rows
        assert all(len(micro) == 2 for micro in one.micro_batches + two.micro_batches)
    # a short last batch in one process is weighted by its rows' share, so the step follows the mean loss
    short = epoch_steps(10, TrainConfig(epochs=1, batch_size=8, grad_accum_steps=2), seed=0, epoch=0)[-1]
    assert [len(m) for m in short.micro_batches] == [1, 1] and short.weights == (0.5, 0.5)


def test_gradient_accumulation_equals_one_big_batch():
    def weights(accum):
        model = ToyClassifier()
        model.head.weight.data.fill_(0.1)
        model.head.bias.data.zero_()
        fit(model, toy_data(64), None, TrainConfig(epochs=2, batch_size=16, grad_accum_steps=accum, lr=0.1,
                                                    optimizer={"name": "sgd"}))
        return model.head.weight.detach().clone()

    assert torch.allclose(weights(1), weights(4), atol=1e-6)


def test_step_mode_with_warmup_and_cosine_schedule():
    lrs = []
    model = ToyClassifier()
    cfg = TrainConfig(steps=10, eval_every_steps=4, batch_size=16, lr=0.1,
                      schedule={"name": "cosine", "warmup_steps": 2, "warmup_start_factor": 0.5})

    def on_step(step, logs):
        lrs.append(step)

    result = fit(model, toy_data(64), None, cfg, on_step=on_step)
    assert lrs == list(range(1, 11))
    assert [h["step"] for h in result.history] == [4, 8, 10]  # rounds of 4 steps, the last one short
    assert result.steps == 10


def test_schedule_shapes():
    from genguard.training.optim import build_optimizer, build_schedule

    def lrs(schedule, total=10):
        param = torch.nn.Parameter(torch.zeros(1))
        cfg = TrainConfig(steps=total, lr=1.0, schedule=schedule)
        optimizer = build_optimizer([{"params": [param], "lr": 1.0, "weight_decay": 0.0}], cfg)
        sched = build_schedule(optimizer, cfg, total)
        out = []
        for _ in range(total):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if sched is not None:
                sched.step()
        return out

    assert lrs({"name": "constant"}) == [1.0] * 10
    cosine = lrs({"name": "cosine"})
    assert cosine[0] == 1.0 and all(a >= b for a, b in zip(cosine, cosine[1:])) and cosine[-1] < 0.05
    assert math.isclose(cosine[5], 0.5 * (1 + math.cos(math.pi * 5 / 10)), rel_tol=1e-6)
    warm = lrs({"name": "linear", "warmup_steps": 4, "warmup_start_factor": 0.25})
    assert warm[0] == pytest.approx(0.25) and warm[4] == pytest.approx(1.0) and warm[-1] < warm[4]


def test_gradient_hook_runs_between_backward_and_step():
    calls = []

    class Hooked(ToyClassifier):
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
    """SGD's step is proportional to the gradient, so the deferred route must deliver its exact scale."""

    class Deferred(ToyClassifier):
        """Its loss stops at a detached copy of the logits; the hook sends ``scale`` x the gradient on."""

        scale = 1.0

        def training_loss(self, batch):
            logits = self.predict_step(batch)
            self._pending = (logits, leaf := logits.detach().requires_grad_(True))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(leaf, batch["label"].float())
            return loss, {}

        def gradient_hook(self):
            def route():
                logits, leaf = self._pending
                return (logits * (self.scale * leaf.grad)).sum()
            return route

    def weights_after(model):
        model.head.weight.data.fill_(0.1)
        model.head.bias.data.zero_()
        fit(model, toy_data(32), None, TrainConfig(epochs=1, batch_size=32, lr=0.1, seed=3,
                                                   optimizer={"name": "sgd"}))
        return model.head.weight.detach().clone()

    start = torch.full((1, 2), 0.1)
    plain, routed = weights_after(ToyClassifier()), weights_after(Deferred())
    assert not torch.equal(plain, start)
    assert torch.allclose(routed, plain, atol=1e-7)
    doubled = Deferred()
    doubled.scale = 2.0
    assert torch.allclose(weights_after(doubled) - start, 2 * (plain - start), atol=1e-7)
    silent = Deferred()
    silent.gradient_hook = lambda: (lambda: None)  # hook that returns nothing: the head gets no gradient
    assert torch.equal(weights_after(silent), start)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="epochz"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig.from_dict({"epochs": 3, "steps": 10})
    with pytest.raises(ValueError, match="multiple of"):
        TrainConfig.from_dict({"batch_size": 10, "grad_accum_steps": 3})


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from toy import ToyClassifier, toy_data
    from genguard.evaluation.evaluators import BinaryEvaluator
    from genguard.training import TrainConfig, fit
    from safetensors.torch import save_file

    kill_after = int(sys.argv[2])
    class Killer:
        def on_epoch_end(self, epoch, metrics):
            if epoch == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, like an OOM kill or a power cut
    torch.manual_seed(0)
    model = ToyClassifier()
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.05, select_best=False, schedule={{"name": "cosine"}})
    result = fit(model, toy_data(), toy_data(seed=1), cfg, evaluator=BinaryEvaluator(),
                 checkpoint_dir=__import__("pathlib").Path(sys.argv[1]), callbacks=[Killer()])
    save_file({{"w": model.head.weight.detach().contiguous()}}, sys.argv[1] + "/final.safetensors")
    print("RESUMED_FROM", result.resumed_from_epoch)
""")


def test_killed_run_resumes_from_last_checkpoint_and_ends_identical(tmp_path):
    tests_dir = str(Path(__file__).parent)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=tests_dir))
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), "3"],
                            capture_output=True, text=True)
    assert killed.returncode != 0  # SIGKILL during epoch 3's callback
    state = json.loads((tmp_path / "ckpt" / "last" / "state.json").read_text())
    assert state["loop"]["round"] == 2  # rounds 1 and 2 were checkpointed
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), "-1"],
                             capture_output=True, text=True, check=True)
    assert "RESUMED_FROM 1" in resumed.stdout
    clean = subprocess.run([sys.executable, str(script), str(tmp_path / "clean"), "-1"],
                           capture_output=True, text=True, check=True)
    assert "RESUMED_FROM None" in clean.stdout
    resumed_w = load_file(str(tmp_path / "ckpt" / "final.safetensors"))["w"]
    clean_w = load_file(str(tmp_path / "clean" / "final.safetensors"))["w"]
    assert torch.equal(resumed_w, clean_w)


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    fit(ToyClassifier(), toy_data(), None, TrainConfig(epochs=2, batch_size=16, lr=0.05), checkpoint_dir=tmp_path)
    result = fit(ToyClassifier(), toy_data(), None, TrainConfig(epochs=2, batch_size=16, lr=0.07),
                 checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch is None
    again = fit(ToyClassifier(), toy_data(), None, TrainConfig(epochs=2, batch_size=16, lr=0.07),
                checkpoint_dir=tmp_path)
    assert again.resumed_from_epoch == 1  # same fingerprint, finished run: nothing left to train
