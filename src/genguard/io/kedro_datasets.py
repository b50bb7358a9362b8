"""Kedro datasets for genguard artifacts; every save is atomic (see genguard.io.atomic).

Referenced from conf/base/catalog.yml as ``genguard.io.kedro_datasets.<Name>``.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import torch
from kedro.io import AbstractDataset, DatasetError
from safetensors.torch import load_file, save_file

from genguard.io.atomic import atomic_dir, atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


class _FileDataset(AbstractDataset):
    def __init__(self, filepath: str, metadata: dict | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(PurePosixPath(self._filepath))}

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _missing(self) -> DatasetError:
        return DatasetError(f"{self._filepath} does not exist: run the node that produces it first")


class JSONDataset(_FileDataset):
    def load(self) -> Any:
        if not self._filepath.is_file():
            raise self._missing()
        return json.loads(self._filepath.read_text())

    def save(self, data: Any) -> None:
        write_json_atomic(self._filepath, data)


class JSONLinesDataset(_FileDataset):
    """A list of JSON records, one per line (chat/RL datasets: what TRL, ms-swift and ``datasets`` read)."""

    def load(self) -> list[Any]:
        if not self._filepath.is_file():
            raise self._missing()
        records = []
        for number, line in enumerate(self._filepath.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{self._filepath}:{number}: not JSON ({error}); rebuild the file with the "
                                       "node that writes it") from error
        return records

    def save(self, data: list[Any]) -> None:
        write_text_atomic(self._filepath, "".join(json.dumps(record, sort_keys=True) + "\n" for record in data))


class ParquetDataset(_FileDataset):
    def load(self) -> pd.DataFrame:
        if not self._filepath.is_file():
            raise self._missing()
        return pd.read_parquet(self._filepath)

    def save(self, data: pd.DataFrame) -> None:
        with atomic_path(self._filepath, suffix=".parquet") as tmp:
            data.to_parquet(tmp, index=False)


class CSVDataset(_FileDataset):
    def load(self) -> pd.DataFrame:
        if not self._filepath.is_file():
            raise self._missing()
        return pd.read_csv(self._filepath)

    def save(self, data: pd.DataFrame) -> None:
        write_text_atomic(self._filepath, data.to_csv(index=False))


class MarkdownDataset(_FileDataset):
    def load(self) -> str:
        return self._filepath.read_text()

    def save(self, data: str) -> None:
        write_text_atomic(self._filepath, data)


class PNGFolderDataset(_FileDataset):
    """A dict ``{name: PNG bytes}`` stored as ``<folder>/<name>.png``; the folder swaps in whole."""

    def load(self) -> dict[str, bytes]:
        if not self._filepath.is_dir():
            raise self._missing()
        return {p.stem: p.read_bytes() for p in sorted(self._filepath.glob("*.png"))}

    def save(self, data: dict[str, bytes]) -> None:
        with atomic_dir(self._filepath) as tmp:
            for name, payload in data.items():
                write_bytes_atomic(tmp / f"{name}.png", payload)


class TensorDictDataset(_FileDataset):
    """``{name: tensor}`` in one safetensors file (feature caches)."""

    def load(self) -> dict[str, torch.Tensor]:
        if not self._filepath.is_file():
            raise self._missing()
        return load_file(str(self._filepath))

    def save(self, data: dict[str, torch.Tensor]) -> None:
        with atomic_path(self._filepath, suffix=".safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in data.items()}, str(tmp),
                      metadata={"genguard": "tensor-dict"})


class ModelDataset(_FileDataset):
    """A trained-model folder (config.json + weights.safetensors, see :mod:`genguard.io.model_files`).

    ``save`` takes any object with ``model`` (a module with ``init_spec``) and ``files_extra()``
    (what its family needs stored beside the weights, e.g. the preprocessing); ``load`` returns
    :class:`genguard.io.model_files.ModelFiles`, which the family turns back into its own object.
    """

    def load(self):
        from genguard.io.model_files import load_model_dir

        if not self._exists():
            raise self._missing()
        return load_model_dir(self._filepath)

    def save(self, data) -> None:
        from genguard.io.model_files import save_model_dir

        save_model_dir(data.model, self._filepath, extra=data.files_extra())

    def _exists(self) -> bool:
        return (self._filepath / "config.json").is_file()
