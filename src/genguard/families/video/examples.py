"""A tiny, runnable example of the video family's trainable (the method contract test runs it): a video MoE
of 2 tiny 3-D CNN experts under J-TLAT (one-step attacks) that builds in milliseconds, and random clips of
the right shape."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from genguard.families.video.clips import ClipSet
from genguard.families.video.moe import METHOD

TINY_MOE: dict[str, Any] = {"classes": 4, "experts": 2, "router": {"kind": "tiny3d", "width": 4, "depth": 2},
                            "expert": {"kind": "tiny3d", "width": 4, "depth": 2}}
_SPECS = {METHOD: {**TINY_MOE, "regime": {"kind": "j_tlat", "router_attack": {"steps": 1},
                                          "expert_attack": {"steps": 1}, "joint_attack": {"steps": 1}}}}


def tiny_spec(method: str) -> dict[str, Any]:
    if method not in _SPECS:
        raise KeyError(f"no tiny example for {method!r}; video methods: {sorted(_SPECS)}")
    return {"family": "video", "method": method, **_SPECS[method]}


def example_dataset(model: Any, n: int = 16, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    clips = torch.rand(n, 3, 4, 16, 16, generator=generator)
    return ClipSet(clips, torch.arange(n) % model.classes)
