"""Which rows form each optimizer step, on one process or on every DeepSpeed rank.

An epoch's order is one seeded permutation (the same in every process). It is cut into global
batches of ``batch_size`` rows; each global batch into ``grad_accum_steps x world`` contiguous
micro-batches; rank ``r`` takes micro-batch ``a * world + r`` for accumulation step ``a``. So the
rows behind an optimizer step are the same in-process and on N ranks, which is what makes the two
backends agree (tested), and a resumed run can skip finished steps without loading their rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from genguard.data.loaders import collate, epoch_generator
from genguard.training.config import TrainConfig


#: Draws taken from an epoch's generator before its permutation. genguard's loop before this plan
#: iterated a ``DataLoader(shuffle=True, generator=g)`` through ``tqdm.auto``, whose asyncio wrapper
#: opens the loader a second time: two worker base seeds were drawn from ``g`` before the shuffle.
#: Drawing the same two keeps the batches, hence the metrics, of every earlier run (same seed).
_DRAWS_BEFORE_PERMUTATION = 2


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """Row order of one epoch: a permutation from the (seed, epoch) generator, the same in every process."""
    if not shuffle:
        return list(range(n))
    generator = epoch_generator(seed, epoch)
    for _ in range(_DRAWS_BEFORE_PERMUTATION):
        torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator).tolist()


def _split_even(rows: list[int], parts: int) -> list[list[int]]:
    base, extra = divmod(len(rows), parts)
    pieces, start = [], 0
    for part in range(parts):
        size = base + (1 if part < extra else 0)
        pieces.append(rows[start:start + size])
        start += size
    return pieces


@dataclass(frozen=True)
class Step:
    """One optimizer step of one rank: its micro-batches (row indices) and each one's loss weight."""

    micro_batches: tuple[tuple[int, ...], ...]
    weights: tuple[float, ...]


def epoch_steps(n: int, cfg: TrainConfig, *, seed: int, epoch: int, world: int = 1, rank: int = 0,
                shuffle: bool = True, pad: bool = False) -> list[Step]:
    """The steps of one epoch for ``rank``.

    ``pad`` (DeepSpeed): a short last global batch is filled up by wrapping around the epoch's
    order, so every rank gets equal micro-batches (DeepSpeed averages per-rank mean losses and
    scales by 1/accumulation; unequal sizes would weight rows unequally). Without padding (one
    process) the short batch is split as evenly as possible and each micro-batch's loss is weighted
    by its share of the batch, so the step still follows the mean loss over its rows.
    """
    order = epoch_order(n, seed, epoch, shuffle)
    parts = cfg.grad_accum_steps * world
    steps = []
    for start in range(0, n, cfg.batch_size):
        chunk = order[start:start + cfg.batch_size]
        if pad and len(chunk) < cfg.batch_size:
            repeats = math.ceil(cfg.batch_size / max(n, 1)) + 1
            chunk = chunk + (order * repeats)[:cfg.batch_size - len(chunk)]
        pieces = _split_even(chunk, parts)
        mine = [pieces[a * world + rank] for a in range(cfg.grad_accum_steps)]
        mine = [piece for piece in mine if piece]
        steps.append(Step(tuple(tuple(p) for p in mine), tuple(len(p) / len(chunk) for p in mine)))
    return steps


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    return math.ceil(n / cfg.batch_size)


class _Planned:
    """A sampler over a precomputed list of micro-batches (DataLoader ``batch_sampler``)."""

    def __init__(self, micro_batches: list[tuple[int, ...]]) -> None:
        self.micro_batches = micro_batches

    def __iter__(self) -> Iterator[list[int]]:
        return (list(batch) for batch in self.micro_batches)

    def __len__(self) -> int:
        return len(self.micro_batches)


@dataclass
class Position:
    """Where a run stands in its data: the epoch and how many of its steps are done."""

    epoch: int = 0
    step_in_epoch: int = 0


def iterate_steps(dataset: Dataset, cfg: TrainConfig, position: Position, *, world: int = 1, rank: int = 0,
                  pad: bool = False) -> Iterator[tuple[list[dict], tuple[float, ...]]]:
    """Yield (micro-batch dicts, loss weights) per optimizer step, forever, from ``position`` on.

    Map-style datasets go epoch by epoch (``position`` advances as steps are taken); a stream
    (``IterableDataset``, yielding whole micro-batches) is read ``grad_accum_steps`` batches per
    step. The caller stops when it has taken the steps it needs.
    """
    if isinstance(dataset, IterableDataset):
        stream = iter(DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers,
                                 generator=torch.Generator().manual_seed(cfg.seed)))
        weight = 1.0 / cfg.grad_accum_steps
        while True:
            micro = [next(stream) for _ in range(cfg.grad_accum_steps)]
            position.step_in_epoch += 1
            yield micro, (weight,) * len(micro)
    n = len(dataset)
    if n == 0:
        raise ValueError("the training set is empty")
    while True:
        plan = epoch_steps(n, cfg, seed=cfg.seed, epoch=position.epoch, world=world, rank=rank, pad=pad)
        remaining = plan[position.step_in_epoch:]
        flat = [batch for step in remaining for batch in step.micro_batches]
        # A generator of its own: the loader's worker base seed must not draw from the global RNG,
        # which the loop seeds and checkpoints for the model's and the augmentations' randomness.
        loader = DataLoader(dataset, batch_sampler=_Planned(flat), collate_fn=collate,
                            num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
        batches = iter(loader)
        for step in remaining:
            micro = [next(batches) for _ in step.micro_batches]
            position.step_in_epoch += 1
            yield micro, step.weights
        position.epoch += 1
        position.step_in_epoch = 0
