"""REVEAL-Bench records as TRL rows: conversational prompt (image + instruction), the chain of evidence as the
completion (SFT), and the columns the rewards read (GRPO: ``solution``, ``label``, ``experts``, ``image``).

The released trainer reads ``messages`` + ``images`` (ms-swift); TRL reads ``prompt`` / ``completion`` +
``images``. Both come from the same record, so one bench file serves either backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from genguard.data.images import load_rgb
from genguard.training import fingerprint

EVIDENCE_KEYS = ("verdict", "score", "text")


def prompt_messages(prompt: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def slim_evidence(experts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the rewards need of each expert (verdict, score, sentence): one fixed struct per expert, so the
    Arrow table behind TRL's dataset has one schema (the full records keep every measurement)."""
    return {name: {"verdict": str(e["verdict"]), "score": float(e["score"]), "text": str(e["text"])}
            for name, e in sorted(experts.items())}


def open_image(path: str | Path) -> Image.Image:
    try:
        return load_rgb(str(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the bench image ({error}); rebuild the bench "
                         "(kedro run --pipeline=reveal_bench) or remove the record") from error


def trl_rows(records: Sequence[dict[str, Any]], bench_root: str | Path, *, with_completion: bool) -> Any:
    """A ``datasets.Dataset`` of TRL rows for ``records``. Images stay files under ``bench_root``: the column
    holds their paths and ``datasets`` decodes each when a batch needs it (no decode at build time, no PNG
    re-encoding into the table, no 60K decoded images held at paper scale).

    Its fingerprint is the records' own key (ids, chains, image paths), given to ``Dataset`` rather than
    computed: `datasets` would hash the whole Arrow table with dill, which pickles every row (slow) and, with
    Python 3.12 and pyarrow 25, fails outright ("Can't pickle <class 'MonthDayNano'>", seen on the GPU machine)."""
    from datasets import Dataset, List
    from datasets import Image as ImageFeature
    from datasets.table import InMemoryTable

    rows = []
    for record in records:
        image = (Path(bench_root) / record["image"]).resolve()
        if not image.is_file():
            raise ValueError(f"{image}: the bench image of record {record['id']} is missing; rebuild the bench "
                             "(kedro run --pipeline=reveal_bench) or remove the record")
        row = {"prompt": prompt_messages(record["prompt"]), "images": [str(image)],
               "solution": record["solution"], "label": int(record["label"]), "id": record["id"],
               "generator": str(record.get("generator") or ""), "experts": slim_evidence(record["experts"])}
        if with_completion:
            row["completion"] = [{"role": "assistant", "content": [{"type": "text", "text": record["solution"]}]}]
        rows.append(row)
    key = fingerprint([(r["id"], r["solution"], r["image"], with_completion) for r in records])
    dataset = Dataset(InMemoryTable.from_pylist(rows), fingerprint=key)
    return dataset.cast_column("images", List(ImageFeature(mode="RGB")), new_fingerprint=f"{key}-images")
