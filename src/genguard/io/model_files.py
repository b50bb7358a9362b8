"""Trained-model folders: ``config.json`` (how to rebuild + what the family needs to use it) and
``weights.safetensors``. A file format only: no family is named here.

No pickle anywhere: loading rebuilds the module through :func:`genguard.registry.build_model` from
the ``init_spec`` it recorded (which names its family, imported as a plugin) and reads tensors with
safetensors. A folder is written whole or not at all (atomic swap). Only weights that the model
can rebuild itself may be absent (a *pretrained* frozen tower, re-fetched from its spec).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from genguard.io.atomic import atomic_dir, write_json_atomic
from genguard.registry import build_model

FORMAT_VERSION = 2
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"


@dataclass
class ModelFiles:
    """A loaded model folder: the rebuilt module and the folder's config (``extra`` = the family's)."""

    model: torch.nn.Module
    config: dict[str, Any]

    @property
    def extra(self) -> dict[str, Any]:
        return self.config.get("extra") or {}


def storable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = model.storable_state_dict() if hasattr(model, "storable_state_dict") else model.state_dict()
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_model_dir(model: torch.nn.Module, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    init_spec = model.stored_init_spec() if hasattr(model, "stored_init_spec") else model.init_spec
    config = {"format_version": FORMAT_VERSION, "init_spec": init_spec, "extra": extra or {}}
    with atomic_dir(out_dir) as tmp:
        save_file(storable_state(model), str(tmp / WEIGHTS_FILE))
        write_json_atomic(tmp / CONFIG_FILE, config)
    return Path(out_dir)


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {model_dir} is not a genguard model folder "
                                    "(expected config.json + weights.safetensors written by save_model_dir)")
    config = json.loads(config_path.read_text())
    version = config.get("format_version")
    if version == 1:
        # Version 1 folders predate families; every model then was an AIGI detector, and kept the
        # preprocessing next to the spec instead of under "extra".
        config = {"format_version": FORMAT_VERSION,
                  "init_spec": {"family": "aigi", **config["init_spec"]},
                  "extra": {**(config.get("extra") or {}), "preprocess": config.get("preprocess")}}
    elif version != FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {version} is not supported "
                         f"(expected {FORMAT_VERSION} or 1)")
    return config


def load_model_dir(model_dir: str | Path) -> ModelFiles:
    config = read_model_config(model_dir)
    model = build_model(config["init_spec"])
    weights = Path(model_dir) / WEIGHTS_FILE
    load_weights(model, load_file(str(weights)), source=weights)
    return ModelFiles(model, config)


def load_cached_model(model_dir: str | Path, cache_key: str) -> ModelFiles | None:
    """The model folder at ``model_dir`` if it was saved for ``cache_key`` (``extra["cache_key"]``), else None
    (absent, unreadable, or made for other config/data). The key is read before any weight is loaded."""
    try:
        if (read_model_config(model_dir).get("extra") or {}).get("cache_key") != cache_key:
            return None
        return load_model_dir(model_dir)
    except (FileNotFoundError, ValueError, KeyError):
        return None


def package_weight_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of submodules whose weights an installed package ships (a submodule marked
    ``weights_from_package``): rebuilt from the package on load, so a model folder need not store them."""
    return tuple(f"{name}." for name, module in model.named_modules()
                 if name and getattr(module, "weights_from_package", None))


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Any = "state") -> None:
    """Load stored weights; only the frozen *pretrained* towers' weights may be absent (rebuilt from the spec
    or from the package that ships them)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    pretrained = bool((getattr(model, "init_spec", {}).get("backbone") or {}).get("pretrained"))
    prefixes = tuple(getattr(model, "frozen_pretrained_prefixes", ()))
    shipped = package_weight_prefixes(model)
    not_rebuildable = [k for k in missing if not ((pretrained and prefixes and k.startswith(prefixes))
                                                  or (shipped and k.startswith(shipped)))]
    if unexpected or not_rebuildable:
        raise ValueError(f"{source}: weights do not match the model "
                         f"(missing {not_rebuildable[:5]}, unexpected {unexpected[:5]})")
