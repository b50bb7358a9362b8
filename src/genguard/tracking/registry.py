"""Log a saved model folder as an MLflow pyfunc model, register it and manage its aliases.

Aliases (MLflow 3 replaced stages with them):

* ``candidate`` – always the version registered last;
* ``champion`` – the best version so far on the metric it was selected with. It moves to a new
  version only if there is no champion yet, or the new value is not NaN and beats the champion's
  strictly on the *same* metric. Values of different metrics are not comparable: then the new
  version wins only when it was selected on validation (``val/...``) and the champion was not
  (e.g. a run without a validation split, selected on ``train/loss``); otherwise the champion
  stays. Ties keep the champion.

The value travels as model-version tags ``validation_metric`` / ``validation_value`` (plus
``greater_is_better``), so the decision can be audited in the UI and recomputed later.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from genguard.tracking.mlflow_tracking import active_or_new_run
from genguard.tracking.pyfunc import MODEL_ARTIFACT

logger = logging.getLogger(__name__)

CANDIDATE = "candidate"
CHAMPION = "champion"
TAG_METRIC = "validation_metric"
TAG_VALUE = "validation_value"
TAG_DIRECTION = "greater_is_better"
MODEL_NAME_IN_RUN = "model"
MODEL_FILES_DIR = "model_files"
ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")

# Pinned to what is installed right now: explicit requirements stop MLflow from inferring the
# environment by importing the model (seconds to minutes), and the pins say what it was tested with.
_RUNTIME_PACKAGES = ("mlflow", "numpy", "pandas", "pillow", "torch", "safetensors")


def default_pip_requirements() -> list[str]:
    """``name==version`` for the packages the pyfunc needs at load time, as installed here.

    ``genguard`` itself is not on a package index, so it is not listed; the serving environment
    must have it installed (for example ``pip install -e .``).
    """
    requirements = []
    for package in _RUNTIME_PACKAGES:
        try:
            requirements.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return requirements


def _is_better(new: float, old: float, greater_is_better: bool) -> bool:
    if math.isnan(new):
        return False
    if math.isnan(old):
        return True
    return new > old if greater_is_better else new < old


def _champion(client: MlflowClient, name: str) -> tuple[int | None, str | None, float | None]:
    """(champion version, its metric, its value) — Nones where absent."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None, None  # no champion alias yet
    tags = champion.tags or {}
    try:
        value = float(tags[TAG_VALUE]) if TAG_VALUE in tags else None
    except ValueError:
        value = None
    return int(champion.version), tags.get(TAG_METRIC), value


def _promote(value: float, metric: str, champion_metric: str | None, champion_value: float | None,
             greater_is_better: bool) -> bool:
    if math.isnan(value):
        return False
    if champion_metric == metric:
        return champion_value is None or _is_better(value, champion_value, greater_is_better)
    # Different metrics are not comparable: prefer a version selected on validation data.
    return metric.startswith("val/") and not (champion_metric or "").startswith("val/")


def log_and_register_model(
    model_dir: str | Path,
    *,
    registered_model_name: str,
    validation_metric: str,
    validation_value: float,
    greater_is_better: bool = True,
    pip_requirements: list[str] | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc model in the active run, register it and update the aliases.

    ``model_dir`` is the folder written by ``genguard.io.model_files`` (safetensors + config). It is
    logged twice: as the pyfunc's ``model`` artifact (what ``load_model`` rebuilds from) and as
    plain run artifacts under ``model_files/`` so the raw files are downloadable from the UI.
    Without an active run, one is started (in ``experiment``, default MLflow's current one) and
    ended here.

    Returns ``{"name", "version", "aliases", "champion_version", "model_uri", "logged_model_uri",
    "run_id", "promoted"}``: versions are ints, ``aliases`` those of the new version after the
    update, ``model_uri`` the registry URI ``models:/<name>/<version>``.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    value = float(validation_value)
    requirements = default_pip_requirements() if pip_requirements is None else list(pip_requirements)
    client = MlflowClient()

    with active_or_new_run(experiment, run_name or f"register-{registered_model_name}") as run:
        mlflow.log_artifacts(str(model_dir), artifact_path=MODEL_FILES_DIR)
        model_info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(ENTRY_FILE),  # a path -> "models from code": nothing is pickled
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            pip_requirements=requirements,
            registered_model_name=registered_model_name,
        )
        run_id = run.info.run_id

    version = model_info.registered_model_version
    if version is None:  # older clients do not fill it in; find the version made from this run
        matches = client.search_model_versions(f"name = '{registered_model_name}' and run_id = '{run_id}'")
        version = max(int(match.version) for match in matches)
    version = int(version)

    tags = {
        TAG_METRIC: validation_metric,
        TAG_VALUE: repr(value),
        TAG_DIRECTION: str(bool(greater_is_better)),
    }
    for key, tag_value in tags.items():
        client.set_model_version_tag(registered_model_name, str(version), key, tag_value)

    champion_version, champion_metric, champion_value = _champion(client, registered_model_name)
    client.set_registered_model_alias(registered_model_name, CANDIDATE, str(version))
    promote = champion_version is None or _promote(value, validation_metric, champion_metric, champion_value,
                                                   greater_is_better)
    if promote:
        client.set_registered_model_alias(registered_model_name, CHAMPION, str(version))
        champion_version = version
        logger.info(
            "%s v%d is the new champion (%s=%s)", registered_model_name, version, validation_metric, value
        )
    else:
        logger.info(
            "%s v%d stays candidate: %s=%s does not beat champion v%d (%s=%s)",
            registered_model_name, version, validation_metric, value, champion_version, champion_metric,
            champion_value,
        )

    aliases = sorted(client.get_model_version(registered_model_name, str(version)).aliases)
    return {
        "name": registered_model_name,
        "version": version,
        "aliases": aliases,
        "champion_version": champion_version,
        "model_uri": f"models:/{registered_model_name}/{version}",
        "logged_model_uri": model_info.model_uri,
        "run_id": run_id,
        "promoted": promote,
    }
