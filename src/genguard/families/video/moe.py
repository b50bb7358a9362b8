"""A model-level video mixture-of-experts: a light router looks at the whole clip and picks among M
complete expert classifiers (arXiv 2602.01369 §3: 4 experts, hard top-1 routing at inference).

    probs    = softmax(router(x))                      (B, M)
    selected = top-k of probs, or ``force``            (B, k)   -- ``force`` is the attacks' expert mask
    F(x)     = sum over the k selected i of gate_i * E_i(x)

Choices where the paper is silent (recorded here, not guessed elsewhere):

* **Gate** ``switch`` (default): gate_i = probs_i, not renormalised over the selected experts, so the task
  loss reaches the router through the gate value even with k = 1 (Switch Transformer, arXiv 2101.03961,
  §2.1). ``renorm`` divides by the selected mass (then with k = 1 the router learns only from ``router_aux``).
* **Dispatch**: each expert runs only on the rows routed to it (``index_add_``), so an MoE forward really
  costs router + k experts, which is what torch's flop counter then measures; ``forward_dense`` runs every
  expert and mixes by probs - the dense model of equal width the cost comparison uses.
* **Router auxiliary loss** ``router_aux``: ``supervised_mod`` (CE of the router towards label mod M; the
  AdvMoE reference code's router target, arXiv 2308.10110) keeps routing from collapsing onto one or two
  experts on small data; ``switch_lb`` (Switch's load-balancing loss M * sum_i f_i P_i) for real data;
  ``none``.
* Pixel range [0, 1]; mean/std normalisation is inside the model (``normalise``), so attacks clip to [0, 1].

Training objectives (standard, PGD-AT, J-TLAT) live in :mod:`genguard.families.video.regimes`; the model
takes one by name (``regime``) so that one class serves every row of the robustness grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genguard.families.video.networks import build_network
from genguard.registry import MODELS
from genguard.training.trainable import Trainable

FAMILY = "video"
METHOD = "video_moe"
GATES = ("switch", "renorm")
ROUTER_AUX = ("supervised_mod", "switch_lb", "none")


@dataclass(frozen=True)
class Routing:
    """What the router did for a batch: its logits (B, M) and the experts that ran (B, k) with their gates."""

    logits: torch.Tensor
    selected: torch.Tensor
    gates: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def top(self) -> torch.Tensor:
        return self.selected[:, 0]


def router_aux_loss(kind: str, router_logits: torch.Tensor, probs: torch.Tensor, selected: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """The auxiliary routing loss (a scalar); see the module docstring for the kinds."""
    experts = probs.shape[1]
    if kind == "supervised_mod":
        return F.cross_entropy(router_logits, labels % experts)
    if kind == "switch_lb":
        fraction = torch.bincount(selected[:, 0], minlength=experts).to(probs.dtype) / selected.shape[0]
        return experts * (fraction * probs.mean(dim=0)).sum()
    if kind == "none":
        return router_logits.new_zeros(())
    raise ValueError(f"router_aux must be one of {ROUTER_AUX}, got {kind!r}")


class VideoMoE(Trainable):
    def __init__(self, *, classes: int, experts: int = 4, top_k: int = 1, router: dict[str, Any] | None = None,
                 expert: dict[str, Any] | None = None, gate: str = "switch",
                 router_aux: dict[str, Any] | None = None, normalise: dict[str, list[float]] | None = None,
                 regime: dict[str, Any] | None = None) -> None:
        router = dict(router or {"kind": "tiny3d", "width": 8})
        expert = dict(expert or {"kind": "tiny3d", "width": 16})
        router_aux = dict(router_aux or {"kind": "supervised_mod", "weight": 0.5})
        regime = dict(regime or {"kind": "standard"})
        super().__init__({"family": FAMILY, "method": METHOD, "classes": classes, "experts": experts,
                          "top_k": top_k, "router": router, "expert": expert, "gate": gate,
                          "router_aux": router_aux, "normalise": normalise, "regime": regime})
        if classes < 2 or experts < 1 or not 1 <= top_k <= experts:
            raise ValueError(f"video_moe needs classes >= 2 and 1 <= top_k <= experts, got classes={classes}, "
                             f"experts={experts}, top_k={top_k}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if router_aux.get("kind") not in ROUTER_AUX:
            raise ValueError(f"router_aux.kind must be one of {ROUTER_AUX}, got {router_aux.get('kind')!r}")
        self.classes, self.n_experts, self.top_k, self.gate = classes, experts, top_k, gate
        self.router_aux = router_aux
        self.router = build_network(router, experts)
        self.experts = nn.ModuleList(build_network(expert, classes) for _ in range(experts))
        mean, std = (normalise or {}).get("mean", [0.0] * 3), (normalise or {}).get("std", [1.0] * 3)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1, 1), persistent=False)
        from genguard.families.video.regimes import build_regime  # regimes use attacks, which use this model

        self.regime = build_regime(regime)

    # ---------------------------------------------------------------------------------- components
    def _normalised(self, clips: torch.Tensor) -> torch.Tensor:
        return (clips - self.mean) / self.std

    def router_logits(self, clips: torch.Tensor) -> torch.Tensor:
        return self.router(self._normalised(clips))

    def route(self, clips: torch.Tensor) -> torch.Tensor:
        """Router probabilities (B, M)."""
        return self.router_logits(clips).softmax(dim=1)

    def expert(self, index: int, clips: torch.Tensor) -> torch.Tensor:
        """Class logits of expert ``index`` alone (B, K): what the expert attack and J-TLAT step 2 use."""
        return self.experts[index](self._normalised(clips))

    def experts_on(self, clips: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of expert ``index[b]`` on row b, no gate: the routing frozen by hand."""
        normalised = self._normalised(clips)
        out = normalised.new_zeros(clips.shape[0], self.classes)
        for position, expert in enumerate(self.experts):
            rows = (index == position).nonzero(as_tuple=True)[0]
            if rows.numel():
                out = out.index_copy(0, rows, expert(normalised[rows]))
        return out

    def routing(self, router_logits: torch.Tensor, force: torch.Tensor | None = None) -> Routing:
        probs = router_logits.softmax(dim=1)
        if force is None:
            selected = probs.topk(self.top_k, dim=1).indices
        else:
            selected = force.view(probs.shape[0], -1).long()
            if selected.min() < 0 or selected.max() >= self.n_experts:
                raise ValueError(f"force names experts outside 0..{self.n_experts - 1}")
        gates = probs.gather(1, selected)
        if self.gate == "renorm":
            gates = gates / gates.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return Routing(logits=router_logits, selected=selected, gates=gates)

    def mix(self, clips: torch.Tensor, routing: Routing) -> torch.Tensor:
        """sum_k gate_k * E_{selected_k}(x), each expert run only on its rows."""
        normalised = self._normalised(clips)
        out = normalised.new_zeros(clips.shape[0], self.classes)
        for index, expert in enumerate(self.experts):
            rows, slots = (routing.selected == index).nonzero(as_tuple=True)
            if rows.numel():
                out = out.index_add(0, rows, routing.gates[rows, slots, None] * expert(normalised[rows]))
        return out

    # ---------------------------------------------------------------------------------- forward passes
    def forward(self, clips: torch.Tensor, force: torch.Tensor | None = None, return_routing: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, Routing]:
        routing = self.routing(self.router_logits(clips), force)
        logits = self.mix(clips, routing)
        return (logits, routing) if return_routing else logits

    def forward_dense(self, clips: torch.Tensor) -> torch.Tensor:
        """Every expert on every clip, mixed by the router's probabilities: the dense model of equal width."""
        probs, normalised = self.route(clips), self._normalised(clips)
        return sum(probs[:, i, None] * expert(normalised) for i, expert in enumerate(self.experts))

    # ---------------------------------------------------------------------------------- training loop contract
    def aux_loss(self, routing: Routing, labels: torch.Tensor) -> torch.Tensor:
        """``router_aux.weight`` x the auxiliary routing loss of a batch's routing."""
        weight = float(self.router_aux.get("weight", 0.5))
        kind = str(self.router_aux["kind"])
        if kind == "none" or weight == 0:
            return routing.logits.new_zeros(())
        return weight * router_aux_loss(kind, routing.logits, routing.probs, routing.selected, labels)

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.regime.loss(self, batch["clips"], batch["label"])

    def predict_step(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(batch["clips"])


@MODELS.register(METHOD)
def build_video_moe(**options: Any) -> VideoMoE:
    return VideoMoE(**options)
