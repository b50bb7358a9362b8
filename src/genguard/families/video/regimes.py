"""Training objectives of the video MoE, one class each with the same call:
``regime.loss(model, clips, labels) -> (scalar loss, {name: float})``. The one training loop
(:func:`genguard.training.fit`) calls it through ``VideoMoE.training_loss``; nothing here owns a loop.

* ``standard``: CE(F(x), y) + router_aux.
* ``pgd_at`` (AT-M, Madry et al. on the MoE as a whole): CE(F(x_pgd), y) + router_aux on x_pgd.
* ``j_tlat`` (the paper's defence, arXiv 2602.01369): three objectives per batch,

  1. router: x_R = TLGA-R(x); CE(pi(x_R), r_top(x)) + lam_R * Lip(pi; x, x_R) + router_aux on x_R
     (routing consistency and smoothness; the gradient reaches only the router's parameters);
  2. weak experts: for the top-2 experts I of pi(x_R) (detached; training-time top-2 as the paper states,
     inference stays top-1), sum over i in I of w_i * [CE(E_i(x_i), y) + lam * Lip(E_i; x, x_i)] with
     w_i = pi_i(x_R) detached; x_i = x_R by default, or a per-expert expert attack (``per_expert_attack``);
     the gradient reaches only the experts;
  3. whole MoE: x_J = J-TLGA(x); CE(F(x_J), y) + lam * Lip(F; x, x_J) + router_aux on x_J.

  **Choice**: the paper runs the three as successive updates. The one loop takes one optimizer step per
  batch, so the three losses are summed: the router's gradient is that of steps 1 + 3, the experts' that
  of steps 2 + 3 - the same per-part objectives - and all three attacks are crafted against the model as
  it was at the start of the batch (a simultaneous rather than sequential update; the attacks and losses
  per batch are the same: two attacks - router and joint - with step 2 reusing x_R, or three with
  ``per_expert_attack``).

Training-time attacks are built from the regime's config blocks (``attack``, ``router_attack``,
``expert_attack``, ``joint_attack``) with the attack registry's options; ``switch_rate`` (the share of
clips whose routing choice the training attack changed) is logged every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from genguard.families.video.attacks import CleanView, build_attack, lipschitz_ratio
from genguard.registry import Registry

REGIMES: Registry[Any] = Registry("training regime")
# seed None: fresh random-start noise for every batch, from the loop's seeded (and checkpointed) RNG.
TRAIN_ATTACK: dict[str, Any] = {"eps": 8 / 255, "steps": 3, "alpha_rel": 0.5, "seed": None}


def build_regime(spec: dict[str, Any]) -> Any:
    options = dict(spec)
    kind = options.pop("kind", "standard")
    try:
        return REGIMES.build(str(kind), **options)
    except TypeError as error:
        raise ValueError(f"bad options for training regime {kind!r}: {options} ({error})") from None


@contextmanager
def reference_mode(model: Any) -> Iterator[None]:
    """Eval mode for passes that only make fixed targets (the clean view and its logits), as the attacks see
    the model: a BatchNorm backbone's running statistics are not updated by them."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _switch_rate(clean: CleanView, adv_top: torch.Tensor) -> float:
    return float((clean.top != adv_top).float().mean())


@REGIMES.register("standard")
class Standard:
    kind: ClassVar[str] = "standard"

    def loss(self, model: Any, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits, routing = model(clips, return_routing=True)
        task, aux = F.cross_entropy(logits, labels), model.aux_loss(routing, labels)
        return task + aux, {"ce": float(task.detach()), "router_aux": float(aux.detach())}


@REGIMES.register("pgd_at")
class PGDAdversarialTraining:
    kind: ClassVar[str] = "pgd_at"

    def __init__(self, attack: dict[str, Any] | None = None) -> None:
        self.attack = build_attack({"kind": "pgd", **TRAIN_ATTACK, **(attack or {})})

    def loss(self, model: Any, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with reference_mode(model):
            clean = CleanView.of(model, clips)  # the router alone; the attack reuses it
        adv = self.attack(model, clips, labels, clean=clean)
        logits, routing = model(adv, return_routing=True)
        task, aux = F.cross_entropy(logits, labels), model.aux_loss(routing, labels)
        return task + aux, {"ce_adv": float(task.detach()), "router_aux": float(aux.detach()),
                            "switch_rate": _switch_rate(clean, routing.top)}


@REGIMES.register("j_tlat")
class JTLAT:
    kind: ClassVar[str] = "j_tlat"

    def __init__(self, router_attack: dict[str, Any] | None = None, expert_attack: dict[str, Any] | None = None,
                 joint_attack: dict[str, Any] | None = None, lip_router: float = 1e-3, lip_logits: float = 1e-5,
                 train_top_k: int = 2, per_expert_attack: bool = False) -> None:
        self.router_attack = build_attack({"kind": "router", **TRAIN_ATTACK, "temporal": True, "gamma1": 0.3,
                                           "lip_weight": lip_router, **(router_attack or {})})
        self.expert_attack = build_attack({"kind": "expert", **TRAIN_ATTACK, "temporal": True,
                                           "lip_weight": lip_logits, **(expert_attack or {})})
        self.joint_attack = build_attack({"kind": "joint", **TRAIN_ATTACK, "temporal": True, "gamma1": 0.3,
                                          "lip_weight": lip_logits, "router_lip_weight": lip_router,
                                          **(joint_attack or {})})
        if train_top_k < 1:
            raise ValueError(f"j_tlat.train_top_k must be >= 1, got {train_top_k}")
        self.lip_router, self.lip_logits = float(lip_router), float(lip_logits)
        self.train_top_k, self.per_expert_attack = int(train_top_k), bool(per_expert_attack)

    def steps(self, model: Any, clips: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """The three step losses (router, experts, whole MoE) of one batch, and what to log."""
        with reference_mode(model):  # one clean view (router, F(x), E_r(x)) for all three attacks and losses
            clean = CleanView.of(model, clips)
            clean_logits = clean.logits(model)

        # Step 1: the router, on clips that steer it towards the weakest expert.
        x_router = self.router_attack(model, clips, labels, clean=clean)
        router_logits = model.router_logits(x_router)
        step1 = (F.cross_entropy(router_logits, clean.top)
                 + self.lip_router * lipschitz_ratio(router_logits.softmax(dim=1), clean.probs, x_router,
                                                     clips).mean()
                 + model.aux_loss(model.routing(router_logits), labels))

        # Step 2: the experts the attacked router would pick (top-k of pi(x_R)), weighted by its trust.
        picked = router_logits.detach().softmax(dim=1).topk(min(self.train_top_k, model.n_experts), dim=1)
        step2 = clips.new_zeros(())
        for slot in range(picked.indices.shape[1]):
            experts = picked.indices[:, slot]
            x_expert = (self.expert_attack(model, clips, labels, experts=experts, clean=clean)
                        if self.per_expert_attack else x_router)
            logits = model.experts_on(x_expert, experts)
            with reference_mode(model):
                clean_expert = clean.expert_logits(model, experts)
            per_clip = (F.cross_entropy(logits, labels, reduction="none")
                        + self.lip_logits * lipschitz_ratio(logits, clean_expert, x_expert, clips))
            step2 = step2 + (picked.values[:, slot] * per_clip).mean()

        # Step 3: the whole MoE under the joint attack.
        x_joint = self.joint_attack(model, clips, labels, clean=clean)
        logits, routing = model(x_joint, return_routing=True)
        step3 = (F.cross_entropy(logits, labels)
                 + self.lip_logits * lipschitz_ratio(logits, clean_logits, x_joint, clips).mean()
                 + model.aux_loss(routing, labels))
        return step1, step2, step3, {"switch_rate": _switch_rate(clean, routing.top)}

    def loss(self, model: Any, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        step1, step2, step3, logs = self.steps(model, clips, labels)
        return step1 + step2 + step3, {"router_step": float(step1.detach()), "expert_step": float(step2.detach()),
                                       "moe_step": float(step3.detach()), **logs}
