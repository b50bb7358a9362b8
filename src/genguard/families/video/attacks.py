"""White-box L-inf attacks on a video mixture-of-experts, each one class with the same call:
``attack(model, clips, labels) -> adversarial clips`` (clips in [0, 1], shape (B, 3, T, H, W)).

Paper-based re-implementation of TLGA / J-TLGA (arXiv 2602.01369, ICLR 2026); no author code exists (the
announced repository holds only a README), so every value below that the paper does not give is a
choice, named as such.

One skeleton (:class:`Attack`): optional uniform random start in the eps-ball, then ``steps`` ascent steps
on a per-sample objective, each followed by projection onto the ball and onto [0, 1]. The attacks differ
only in the objective they climb:

=================  =====================================================================================
``pgd``            CE(F(x'), y) [+ lip_weight * Lip(F)] - PGD (Madry et al.); with ``temporal`` and a
                   Lipschitz weight it is the paper's TLA-M
``router``         CE(pi(x'), r_top) + lip_weight * Lip(pi) - gamma1 * CE(pi(x'), r_low): push routing
                   off its clean choice r_top and onto the clean least-confident expert r_low
                   (TLGA-R; gamma1 = 0 is TLA-R; without temporal steps and Lipschitz term, PGD-R)
``expert``         CE(E_r(x'), y) [+ lip_weight * Lip(E_r)] with the routing frozen at the clean
                   choice r (the "expert mask"; TLA-E / PGD-E)
``joint``          [CE(F(x'), y) + lip_weight * Lip(F)] + gamma2 * router objective (J-TLGA; gamma1 = 0
                   is J-TLA)
=================  =====================================================================================

* **Lipschitz ratio** Lip(g; x, x') = MSE(g(x), g(x')) / MSE(x, x'), per sample; g(x) of the clean clip is
  computed once and detached. Router outputs are probabilities, F and experts give logits (the weights
  differ by that scale: ``lip_weight`` for F/E, ``router_lip_weight`` for the router term of ``joint``).
* **Temporal step** (``temporal: true``): a momentum of per-frame gradient norms V[b, f] <- beta * V +
  ||G[b, :, f]||_2 (V_0 = 0), and frame f of clip b moves by alpha_rel * eps / (1 + ln(1 + sqrt(V))),
  with V taken *before* this step's update, so the first step is alpha_rel * eps and later ones shrink
  where gradients are large. Without it every frame moves alpha_rel * eps.
* **Update** ``sign`` (default, PGD's) or ``raw``: G / max|G| over the whole clip. Normalising per frame
  (or taking the sign) hands large-gradient frames no larger move than small ones; only per-clip
  normalisation lets the raw gradient tilt the budget towards the sensitive frames.
* r_top / r_low are argmax / argmin of the router on the **clean** clip (the clean decision is what the
  attacker flips, and the clip's least-trusted expert is where it steers).
* The model is put in eval mode for the attack and restored after; only the input gets gradients, so an
  attack inside a training step leaves the parameters' ``.grad`` untouched.

**Random start**: with an integer ``seed`` every call starts from the same seeded noise (evaluation: every
model and attack of a grid starts alike, reproducibly); with ``seed: null`` the noise comes from torch's
global generator, so a training attack draws fresh noise for every batch and the training loop's own seed
and checkpointed RNG state make it reproducible.

``mean_steps`` holds the mean per-frame step size of each iteration of the last call (the temporal rule's
steps depend on the gradient's absolute scale, so this is logged, not assumed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from genguard.registry import Registry

ATTACKS: Registry[Any] = Registry("video attack")
UPDATES = ("sign", "raw")
_TINY = 1e-12


def lipschitz_ratio(out_adv: torch.Tensor, out_clean: torch.Tensor, x_adv: torch.Tensor,
                    x_clean: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE(g(x), g(x')) / MSE(x, x'); 0 where x' = x (never 0/0)."""
    numerator = (out_adv - out_clean).pow(2).flatten(1).mean(dim=1)
    denominator = (x_adv - x_clean).pow(2).flatten(1).mean(dim=1)
    return numerator / (denominator + _TINY)


@dataclass(frozen=True)
class CleanView:
    """What objectives need from the clean clips, detached: the router's decision (always, from the router
    alone), and F(x) / E_r(x) only when an objective asks for them (a Lipschitz term), each computed once.
    Build one per batch with :meth:`of` and hand it to several attacks (J-TLAT does) to share it."""

    clips: torch.Tensor
    probs: torch.Tensor        # pi(x)
    top: torch.Tensor          # r_top: the clean routing choice
    low: torch.Tensor          # r_low: the clean least-confident expert
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def logits(self, model: Any) -> torch.Tensor:
        """F(x) of the clean clips."""
        if "moe" not in self._cache:
            with torch.no_grad():
                self._cache["moe"] = model(self.clips)
        return self._cache["moe"]

    def expert_logits(self, model: Any, experts: torch.Tensor) -> torch.Tensor:
        """E_r(x) of the clean clips for the experts ``experts``."""
        key = ("experts", tuple(experts.tolist()))
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = model.experts_on(self.clips, experts)
        return self._cache[key]

    @classmethod
    def of(cls, model: Any, clips: torch.Tensor) -> CleanView:
        with torch.no_grad():
            probs = model.route(clips)
        return cls(clips=clips.detach(), probs=probs, top=probs.argmax(dim=1), low=probs.argmin(dim=1))


class Attack:
    """The shared PGD skeleton; subclasses give ``objective`` (per-sample, maximised)."""

    kind: ClassVar[str] = "attack"

    def __init__(self, eps: float = 8 / 255, steps: int = 10, alpha_rel: float = 0.25, random_start: bool = True,
                 temporal: bool = False, beta: float = 0.9, update: str = "sign", lip_weight: float = 0.0,
                 seed: int | None = 0) -> None:
        if eps < 0 or steps < 0 or alpha_rel <= 0:
            raise ValueError(f"{self.kind}: need eps >= 0, steps >= 0, alpha_rel > 0; got {eps}, {steps}, "
                             f"{alpha_rel}")
        if update not in UPDATES:
            raise ValueError(f"{self.kind}: update must be one of {UPDATES}, got {update!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"{self.kind}: momentum beta must be in [0, 1), got {beta}")
        self.eps, self.steps, self.alpha_rel = float(eps), int(steps), float(alpha_rel)
        self.random_start, self.temporal, self.beta = bool(random_start), bool(temporal), float(beta)
        self.update, self.lip_weight = update, float(lip_weight)
        self.seed = None if seed is None else int(seed)
        self.mean_steps: list[float] = []

    def objective(self, model: Any, adv: torch.Tensor, labels: torch.Tensor, clean: CleanView,
                  experts: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def step_size(self, grad: torch.Tensor, momentum: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor]:
        """(this step's size: a scalar or (B, 1, T, 1, 1), the momentum after it)."""
        base = self.alpha_rel * self.eps
        if not self.temporal:
            return base, momentum
        step = base / (1.0 + torch.log1p(momentum.sqrt()))
        frame_norms = grad.pow(2).sum(dim=(1, 3, 4), keepdim=True).sqrt()
        return step, self.beta * momentum + frame_norms

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.update == "sign":
            return grad.sign()
        return grad / grad.abs().amax(dim=(1, 2, 3, 4), keepdim=True).clamp_min(_TINY)

    def __call__(self, model: Any, clips: torch.Tensor, labels: torch.Tensor,
                 experts: torch.Tensor | None = None, clean: CleanView | None = None) -> torch.Tensor:
        """Adversarial clips in the eps-ball around ``clips`` and in [0, 1]; ``experts`` (B,) overrides the
        expert an ``expert`` attack targets (default: the clean routing choice); ``clean`` is a view of these
        clips already made (by :meth:`CleanView.of` in eval mode), shared with other attacks on them."""
        self.mean_steps = []
        clips = clips.detach()
        if self.eps == 0 or self.steps == 0:
            return clips.clone()
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                return self._run(model, clips, labels, experts, clean or CleanView.of(model, clips))
        finally:
            model.train(was_training)

    def _run(self, model: Any, clips: torch.Tensor, labels: torch.Tensor, experts: torch.Tensor | None,
             clean: CleanView) -> torch.Tensor:
        adv = clips
        if self.random_start:
            generator = None if self.seed is None else torch.Generator(device=clips.device).manual_seed(self.seed)
            noise = torch.rand(clips.shape, generator=generator, device=clips.device, dtype=clips.dtype)
            adv = (clips + (2 * noise - 1) * self.eps).clamp(0, 1)
        momentum = clips.new_zeros(clips.shape[0], 1, clips.shape[2], 1, 1)
        for _ in range(self.steps):
            adv = adv.detach().requires_grad_(True)
            loss = self.objective(model, adv, labels, clean, experts).sum()
            (grad,) = torch.autograd.grad(loss, adv)
            step, momentum = self.step_size(grad, momentum)
            self.mean_steps.append(float(torch.as_tensor(step).mean()))
            adv = adv.detach() + step * self.direction(grad)
            adv = (clips + (adv - clips).clamp(-self.eps, self.eps)).clamp(0, 1)
        return adv.detach()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in vars(self).items() if k != "mean_steps"}}


def _router_objective(routing_logits: torch.Tensor, adv: torch.Tensor, clean: CleanView, lip_weight: float,
                      gamma1: float) -> torch.Tensor:
    log_probs = routing_logits.log_softmax(dim=1)
    away = -log_probs.gather(1, clean.top[:, None])[:, 0]       # CE towards the clean choice: raised
    loss = away
    if lip_weight:
        loss = loss + lip_weight * lipschitz_ratio(log_probs.exp(), clean.probs, adv, clean.clips)
    if gamma1:
        towards_weakest = -log_probs.gather(1, clean.low[:, None])[:, 0]
        loss = loss - gamma1 * towards_weakest                  # CE towards the weakest expert: lowered
    return loss


@ATTACKS.register("pgd")
class PGD(Attack):
    """Whole-model attack: CE(F(x'), y) (+ lip_weight * Lip(F)); PGD, or TLA-M with temporal steps."""

    kind = "pgd"

    def objective(self, model: Any, adv: torch.Tensor, labels: torch.Tensor, clean: CleanView,
                  experts: torch.Tensor | None) -> torch.Tensor:
        logits = model(adv)
        loss = F.cross_entropy(logits, labels, reduction="none")
        if self.lip_weight:
            loss = loss + self.lip_weight * lipschitz_ratio(logits, clean.logits(model), adv, clean.clips)
        return loss


@ATTACKS.register("router")
class RouterAttack(Attack):
    """Router-only attack (TLGA-R): only the router's output enters the objective."""

    kind = "router"

    def __init__(self, gamma1: float = 0.3, **options: Any) -> None:
        super().__init__(**options)
        self.gamma1 = float(gamma1)

    def objective(self, model: Any, adv: torch.Tensor, labels: torch.Tensor, clean: CleanView,
                  experts: torch.Tensor | None) -> torch.Tensor:
        return _router_objective(model.router_logits(adv), adv, clean, self.lip_weight, self.gamma1)


@ATTACKS.register("expert")
class ExpertAttack(Attack):
    """Expert-only attack: routing frozen at the clean choice (or ``experts``), CE of that expert alone."""

    kind = "expert"

    def objective(self, model: Any, adv: torch.Tensor, labels: torch.Tensor, clean: CleanView,
                  experts: torch.Tensor | None) -> torch.Tensor:
        chosen = clean.top if experts is None else experts
        logits = model.experts_on(adv, chosen)
        loss = F.cross_entropy(logits, labels, reduction="none")
        if self.lip_weight:
            loss = loss + self.lip_weight * lipschitz_ratio(logits, clean.expert_logits(model, chosen), adv,
                                                            clean.clips)
        return loss


@ATTACKS.register("joint")
class JointAttack(Attack):
    """J-TLGA: the whole-model objective plus gamma2 x the guided router objective, from one forward pass."""

    kind = "joint"

    def __init__(self, gamma1: float = 0.3, gamma2: float = 1.0, router_lip_weight: float = 1e-3,
                 **options: Any) -> None:
        super().__init__(**options)
        self.gamma1, self.gamma2, self.router_lip_weight = float(gamma1), float(gamma2), float(router_lip_weight)

    def objective(self, model: Any, adv: torch.Tensor, labels: torch.Tensor, clean: CleanView,
                  experts: torch.Tensor | None) -> torch.Tensor:
        logits, routing = model(adv, return_routing=True)
        loss = F.cross_entropy(logits, labels, reduction="none")
        if self.lip_weight:
            loss = loss + self.lip_weight * lipschitz_ratio(logits, clean.logits(model), adv, clean.clips)
        router = _router_objective(routing.logits, adv, clean, self.router_lip_weight, self.gamma1)
        return loss + self.gamma2 * router


def build_attack(spec: dict[str, Any]) -> Attack:
    """An attack from its config block ``{"kind": pgd | router | expert | joint, **options}``."""
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind is None:
        raise ValueError(f"an attack block needs a 'kind' (one of {ATTACKS.names()}), got {spec!r}")
    try:
        return ATTACKS.build(str(kind), **options)
    except TypeError as error:
        raise ValueError(f"bad options for attack {kind!r}: {options} ({error})") from None
