"""One tiny registry type (methods, datasets, evaluators, data sources, conditions, ...).

timm-style: a module defines a factory and decorates it; importing the package registers it;
callers build by name. Unknown names fail with the list of known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not factory:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorate

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def build(self, name: str, /, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# --------------------------------------------------------------------------------------------------
# Models of every family, rebuilt from the ``init_spec`` they record (model files, DeepSpeed ranks).

FAMILIES_PACKAGE = "genguard.families"

#: Every trainable model of every family, by method name (``build_<method>(**options)`` factories).
MODELS: Registry[Any] = Registry("method")


def import_family(family: str) -> None:
    """Import ``genguard.families.<family>`` so its models and datasets register themselves.

    The one place the core names the families package: by string, as a plugin, so that core
    code can rebuild any family's model in a fresh process without importing families itself.
    """
    importlib.import_module(f"{FAMILIES_PACKAGE}.{family}")


def build_model(init_spec: dict[str, Any]) -> Any:
    """Rebuild a model from the ``init_spec`` it recorded: ``{"family", "method", **options}``."""
    spec = dict(init_spec)
    family = spec.pop("family", None)
    method = spec.pop("method")
    if family and method not in MODELS:
        import_family(family)
    return MODELS.build(method, **spec)


#: Per family: ``load(model_dir) -> object with predict(model_input)``, for the MLflow pyfunc.
PREDICTORS: Registry[Any] = Registry("predictor")


def load_predictor(model_dir: str) -> Any:
    """The family predictor of a model folder (its ``config.json`` names the family)."""
    import json
    from pathlib import Path

    marker = Path(model_dir) / "genguard.json"  # folders in another library's format name their family here
    if marker.is_file():
        named = json.loads(marker.read_text())
        family = named["family"]
        if family not in PREDICTORS and named.get("module"):  # a core model (e.g. a backbone prior)
            importlib.import_module(named["module"])
    else:
        spec = json.loads((Path(model_dir) / "config.json").read_text()).get("init_spec") or {}
        family = spec.get("family", "aigi")  # format 1 folders were all AIGI detectors
    if family not in PREDICTORS:
        import_family(family)
    return PREDICTORS.build(family, model_dir=model_dir)
