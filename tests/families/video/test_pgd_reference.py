"""Our video PGD against a reference implementation: the Adversarial Robustness Toolbox's
``ProjectedGradientDescent`` (ART 1.20.1) attacking the same dense model with the same budget.

Without random start the two must produce the *same* clips, bit for bit, and that is not luck:

* both ascend cross-entropy with sign steps; ART's loss is the batch mean, ours the per-clip sum, and the
  mean's gradient is the sum's times 1/8 (B = 8), a power of two, so every float in the backward pass is
  scaled exactly and every sign agrees;
* step ``alpha_rel * eps = 0.25 * 8/255`` equals ART's ``eps_step = 2/255`` exactly (scaling by 2^-2);
* ART clips to [0, 1] and then projects onto the eps-ball, we do the reverse; both boxes contain the clean
  clip, so either order lands on their intersection, and with eps < 0.5 the arithmetic is exact too.

Any disagreement therefore means a real difference in the attack (a flipped step is 2/255 off), which is
why the first test asserts equality rather than a tolerance. With random start the two draw different
noise, so the second test checks only what both must satisfy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

from genguard.families.video import VideoMoE
from genguard.families.video.attacks import build_attack
from genguard.families.video.moe import Routing

EPS = 8 / 255
STEPS = 5
CLASSES = 4
SHAPE = (3, 4, 16, 16)  # (C, T, H, W)
BATCH = 8


class DenseMoE(VideoMoE):
    """The MoE with every expert mixed by the router's probabilities (``forward_dense``) as its forward: a
    smooth model with no top-k dispatch, which ART's estimator can take as a plain classifier. With
    ``return_routing`` it also gives the router's decision, which our attack's clean view reads (r_top,
    r_low); PGD's objective itself uses only the logits."""

    def forward(self, clips: torch.Tensor, force: torch.Tensor | None = None, return_routing: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, Routing]:
        logits = self.forward_dense(clips)
        if return_routing:
            return logits, self.routing(self.router_logits(clips), force)
        return logits


Setup = tuple[DenseMoE, torch.Tensor, torch.Tensor]


@pytest.fixture
def setup() -> Setup:
    """A tiny seeded dense model, random clips in [0, 1] and labels = its clean predictions (so the clean
    accuracy is 1 and any drop is the attack's doing)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        network = {"kind": "tiny3d", "width": 4, "depth": 2}
        model = DenseMoE(classes=CLASSES, experts=2, router=network, expert=network).eval()
        clips = torch.rand(BATCH, *SHAPE)
    with torch.no_grad():
        labels = model(clips).argmax(dim=1)
    return model, clips, labels


def _art_pgd(model: nn.Module, clips: torch.Tensor, labels: torch.Tensor, random_init: int) -> torch.Tensor:
    classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=SHAPE,
                                   nb_classes=CLASSES, clip_values=(0.0, 1.0),
                                   device_type="cpu")  # our attack runs on the clips' (CPU) device
    attack = ProjectedGradientDescent(classifier, norm=np.inf, eps=EPS, eps_step=2 / 255, max_iter=STEPS,
                                      num_random_init=random_init, targeted=False, batch_size=BATCH,
                                      verbose=False)
    # y explicitly: with y=None ART attacks the model's own predictions (its "label leaking" guard)
    return torch.from_numpy(attack.generate(clips.numpy(), y=labels.numpy()))


def _ours(model: Any, clips: torch.Tensor, labels: torch.Tensor, random_start: bool) -> torch.Tensor:
    attack = build_attack({"kind": "pgd", "eps": EPS, "steps": STEPS, "alpha_rel": 0.25,
                           "random_start": random_start})
    return attack(model, clips, labels)


def _in_budget(adv: torch.Tensor, clips: torch.Tensor) -> bool:
    inside_ball = (adv - clips).abs().max() <= EPS + 1e-7  # float32 rounding of eps itself
    return bool(inside_ball and adv.min() >= 0 and adv.max() <= 1)


def test_pgd_matches_art_exactly_without_random_start(setup: Setup) -> None:
    model, clips, labels = setup
    ours = _ours(model, clips, labels, random_start=False)
    reference = _art_pgd(model, clips, labels, random_init=0)

    difference = (ours - reference).abs()
    assert torch.equal(ours, reference), (f"{int((difference > 0).sum())} of {difference.numel()} elements "
                                          f"differ, max {float(difference.max()):.3g}")
    # The comparison must exercise what could differ: both constraints active, not a no-op attack.
    perturbation = (ours - clips).abs()
    assert bool((perturbation >= EPS - 1e-7).float().mean() > 0.5), "5 steps of eps/4 mostly reach the edge"
    assert bool(((ours == 0) | (ours == 1)).any()), "the [0, 1] clip never engaged"
    assert _in_budget(ours, clips)


def test_random_start_both_stay_in_budget_and_hurt(setup: Setup) -> None:
    model, clips, labels = setup
    ours = _ours(model, clips, labels, random_start=True)
    state = np.random.get_state()  # ART draws its start from numpy's global generator
    try:
        np.random.seed(0)
        reference = _art_pgd(model, clips, labels, random_init=1)
    finally:
        np.random.set_state(state)

    with torch.no_grad():
        clean_loss = F.cross_entropy(model(clips), labels)
        for name, adv in {"ours": ours, "art": reference}.items():
            assert _in_budget(adv, clips), name
            logits = model(adv)
            assert float(F.cross_entropy(logits, labels)) > float(clean_loss), name
            assert float((logits.argmax(dim=1) == labels).float().mean()) < 1.0, name  # clean accuracy is 1
    assert not torch.equal(ours, reference)  # different random starts: the first test's equality is earned
