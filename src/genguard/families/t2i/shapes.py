"""ShapesT2I: the testbed's captioned world. Procedurally drawn objects whose captions name colour,
shape and style, deterministic from a seed.

The world is designed for the two methods it tests:

- an *object* concept and a *style* concept to erase (``triangle`` and ``outline`` by default), each with
  several synonyms, so a prompt bank (TICoE's CCCM) can use some and robustness tests the held-out ones;
- a *look-alike* neighbour for the object (a diamond, like the triangle a pointed polygon) next to unrelated
  shapes (circle, square): the neighbour measures over-erasure (TICoE's MCP), the others preservation;
- captions that all start with the article "a", so a homoglyph trigger (Cyrillic "а") poisons any prompt.

Images are 3 x S x S in [0, 1]: a pale background, one object of random size, position and rotation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.10), "green": (0.10, 0.68, 0.20), "blue": (0.14, 0.30, 0.92), "yellow": (0.95, 0.84, 0.08),
}
#: Every shape's words. The first is the canonical name (the classifier's class name).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "trigon", "pyramid", "three sided shape"),
    "diamond": ("diamond", "rhombus", "lozenge"),
}
STYLES = ("solid", "outline")
#: How a caption names a style (``{obj}`` = "<colour> <shape word>"); solid is also the unmarked default.
STYLE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "solid": ("a {obj}", "a photo of a {obj}", "a solid {obj}", "a filled {obj}", "a picture of a {obj}"),
    "outline": ("a {obj} drawn in outline", "an outline of a {obj}", "a line drawing of a {obj}",
                "a sketch of a {obj}", "a {obj} outline"),
}
SHAPES = tuple(SHAPE_WORDS)


@dataclass(frozen=True)
class ShapesWorld:
    """What the world holds and how it is drawn (all from config)."""

    image_size: int = 32
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    styles: tuple[str, ...] = STYLES
    size_range: tuple[float, float] = (0.55, 0.85)   # object radius as a fraction of the half-width
    max_rotation_deg: float = 15.0
    outline_width: float = 0.3                       # ring width as a fraction of the object radius
    shape_words: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SHAPE_WORDS))

    def __post_init__(self) -> None:
        unknown = [c for c in self.colours if c not in COLOURS] + [s for s in self.shapes if s not in SHAPE_WORDS] \
            + [s for s in self.styles if s not in STYLES]
        if unknown:
            raise ValueError(f"unknown concepts {unknown}; the world draws colours {list(COLOURS)}, shapes "
                             f"{list(SHAPE_WORDS)} and styles {list(STYLES)}")
        object.__setattr__(self, "colours", tuple(self.colours))
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "styles", tuple(self.styles))
        object.__setattr__(self, "size_range", tuple(self.size_range))

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """The classifier heads: attribute -> class names."""
        return {"shape": self.shapes, "colour": self.colours, "style": self.styles}

    def vocabulary(self) -> set[str]:
        """Every concept word the world's captions use (for "is this concept in the vocabulary?")."""
        words = set(self.colours) | set(self.styles) | {"outline", "filled"}
        for shape in self.shapes:
            words.update(self.shape_words[shape])
        return words


def caption(shape_word: str, colour: str, style: str, template: int = 0) -> str:
    templates = STYLE_TEMPLATES[style]
    return templates[template % len(templates)].format(obj=f"{colour} {shape_word}")


def _inside(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Soft-free membership of points (u, v) in a unit-radius shape (v points down)."""
    if shape == "circle":
        return u ** 2 + v ** 2 <= 1.0
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.8
    if shape == "triangle":
        return (v <= 0.75) & (v >= -0.95 + 1.9 * u.abs())
    if shape == "diamond":
        return u.abs() / 0.8 + v.abs() <= 1.0
    raise KeyError(shape)


def draw(world: ShapesWorld, shape: str, colour: str, style: str, generator: torch.Generator) -> torch.Tensor:
    """One 3 x S x S image in [0, 1]; every random draw comes from ``generator``."""
    size = world.image_size
    def r() -> float:
        return float(torch.rand((), generator=generator))

    radius = world.size_range[0] + (world.size_range[1] - world.size_range[0]) * r()
    cx, cy = [(1.0 - radius) * (2 * r() - 1) for _ in range(2)]
    angle = math.radians(world.max_rotation_deg * (2 * r() - 1))
    background = torch.tensor([0.88, 0.88, 0.86]) + 0.06 * (torch.rand(3, generator=generator) - 0.5)
    tint = torch.tensor(COLOURS[colour]) + 0.06 * (torch.rand(3, generator=generator) - 0.5)

    # Supersample 2x and average: anti-aliased edges, so the shape is legible at 32 px.
    axis = (torch.arange(2 * size) + 0.5) / size - 1.0
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    dx, dy = x - cx, y - cy
    u = (math.cos(angle) * dx + math.sin(angle) * dy) / radius
    v = (-math.sin(angle) * dx + math.cos(angle) * dy) / radius
    mask = _inside(shape, u, v)
    if style == "outline":
        inner = 1.0 - world.outline_width
        mask = mask & ~_inside(shape, u / inner, v / inner)
    mask = torch.nn.functional.avg_pool2d(mask.float()[None, None], 2)[0]
    image = background[:, None, None] * (1 - mask) + tint.clamp(0, 1)[:, None, None] * mask
    return image.clamp(0.0, 1.0)


def sample_rows(world: ShapesWorld, count: int, seed: int, *, words: dict[str, tuple[str, ...]] | None = None
                ) -> list[dict[str, object]]:
    """``count`` balanced (shape, colour, style) draws with a caption each: shape word and template random."""
    generator = torch.Generator().manual_seed(seed)
    words = words or world.shape_words
    combos = [(s, c, st) for s in world.shapes for c in world.colours for st in world.styles]
    rows = []
    for index in range(count):
        shape, colour, style = combos[index % len(combos)]
        choices = words[shape]
        word = choices[int(torch.randint(len(choices), (), generator=generator))]
        template = int(torch.randint(len(STYLE_TEMPLATES[style]), (), generator=generator))
        rows.append({"shape": shape, "colour": colour, "style": style, "shape_word": word,
                     "caption": caption(word, colour, style, template), "seed": seed * 1_000_003 + index})
    return rows


def render_rows(world: ShapesWorld, rows: list[dict[str, object]]) -> torch.Tensor:
    """The images of ``rows`` (N x 3 x S x S), each from its own row seed (independent of the batch)."""
    return torch.stack([draw(world, str(row["shape"]), str(row["colour"]), str(row["style"]),
                             torch.Generator().manual_seed(int(row["seed"]))) for row in rows])
