"""Prompt sets of the testbed's evaluations, built from the world's words (one place, so the erasure and
backdoor protocols, their tests and the benchmarks ask the same questions).

Each prompt comes with what it asks for (shape, colour, style), so the concept classifier can say whether
the image shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from genguard.families.t2i.shapes import STYLE_TEMPLATES, ShapesWorld, caption


@dataclass(frozen=True)
class Prompt:
    text: str
    shape: str
    colour: str
    style: str
    word: str = ""
    template: int = 0

    def row(self) -> dict[str, str]:
        return {"caption": self.text, "shape": self.shape, "colour": self.colour, "style": self.style}


def prompts_for(world: ShapesWorld, *, shapes: Sequence[str] | None = None, words: dict[str, Sequence[str]] | None = None,
                colours: Sequence[str] | None = None, styles: Sequence[str] | None = None,
                templates: Sequence[int] | None = None) -> list[Prompt]:
    """Every (shape word, colour, style, template) combination asked for (defaults: all of the world's)."""
    out = []
    for shape in shapes or world.shapes:
        for word in (words or {}).get(shape) or world.shape_words[shape]:
            for colour in colours or world.colours:
                for style in styles or world.styles:
                    for template in templates if templates is not None else range(len(STYLE_TEMPLATES[style])):
                        out.append(Prompt(caption(word, colour, style, template), shape, colour, style, word,
                                          template))
    return out


def repeat(prompts: Sequence[Prompt], count: int, seed: int = 0) -> list[Prompt]:
    """``count`` prompts from a seeded shuffle of ``prompts``, cycled (each repetition gets its own image seed
    downstream). Shuffled because the lists are ordered by shape then colour: the first rows would all ask for
    one shape."""
    if not prompts:
        raise ValueError("no prompts to repeat: the selection is empty")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    return [prompts[order[i % len(order)]] for i in range(count)]
