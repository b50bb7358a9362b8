"""MLflow tracking + registry against a throw-away SQLite backend.

One backend per module, keeping tests apart by distinct registered-model and experiment names:
MLflow builds a fresh SQLite schema by replaying its migrations (~10 s on the 2-core reference
machine), so the module also keeps an already-migrated empty database in pytest's cache, keyed by
the MLflow version, and copies it (~0.1 s) on later runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from genguard.evaluation.grouping import group_table, summarise  # noqa: E402
from genguard.registry import PREDICTORS  # noqa: E402
from genguard.tracking.mlflow_tracking import (  # noqa: E402
    active_or_new_run,
    default_tracking_uri,
    ensure_experiment,
    log_evaluation,
    log_params_flat,
    safe_metric_name,
)
from genguard.tracking.registry import log_and_register_model  # noqa: E402


class _StandInPredictor:
    """Plays a family's predictor: P(fake) = mean pixel / 255 + the offset its folder stores."""

    def __init__(self, model_dir: str) -> None:
        self.offset = json.loads((Path(model_dir) / "config.json").read_text())["offset"]

    def predict(self, model_input) -> np.ndarray:
        if isinstance(model_input, pd.DataFrame):
            images = [np.asarray(Image.open(path).convert("RGB")) for path in model_input["path"]]
        else:
            images = list(np.asarray(model_input))
        means = np.array([np.asarray(image, dtype=np.float64).mean() for image in images])
        return np.clip(means / 255.0 + self.offset, 0.0, 1.0)


if "standin" not in PREDICTORS:
    PREDICTORS.register("standin")(_StandInPredictor)


def _seed_migrated_db(pytestconfig: pytest.Config, target: Path) -> None:
    cache = getattr(pytestconfig, "cache", None)
    if cache is None:  # -p no:cacheprovider: MLflow creates the schema itself, just slower
        return
    template = Path(cache.mkdir(f"mlflow-sqlite-{mlflow.__version__}")) / "empty.db"
    if not template.exists():
        building = template.with_name(f".building-{os.getpid()}.db")
        MlflowClient(f"sqlite:///{building}").search_experiments()  # runs the migrations
        os.replace(building, template)  # atomic: a concurrent run never copies half a template
    shutil.copyfile(template, target)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, pytestconfig):
    root = tmp_path_factory.mktemp("mlflow")
    _seed_migrated_db(pytestconfig, root / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment_id = ensure_experiment("genguard-tests", root / "artifacts")
        mlflow.set_experiment(experiment_id=experiment_id)
        yield {"root": root, "uri": uri, "experiment_id": experiment_id}
        while mlflow.active_run() is not None:
            mlflow.end_run()
    mlflow.set_tracking_uri(previous_uri)


def _detector_dir(parent: Path, name: str, offset: float) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"init_spec": {"family": "standin"}, "offset": offset}))
    (folder / "weights.safetensors").write_bytes(b"not really tensors")
    return folder


def test_default_tracking_uri_is_sqlite_under_mlruns(tmp_path):
    uri = default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()


def test_ensure_experiment_uses_artifact_root_and_is_idempotent(tracking):
    root = tracking["root"] / "custom-artifacts"
    first = ensure_experiment("genguard-ensure", root)
    assert ensure_experiment("genguard-ensure", root) == first
    assert MlflowClient().get_experiment(first).artifact_location == root.resolve().as_uri()


def test_active_or_new_run_reuses_an_active_run(tracking):
    with mlflow.start_run() as outer:
        with active_or_new_run("ignored", "ignored") as inner:
            assert inner.info.run_id == outer.info.run_id
        assert mlflow.active_run() is not None  # not ended by the helper
    with active_or_new_run("genguard-own-run", "mine") as run:
        assert run.info.run_name == "mine"
    assert mlflow.active_run() is None
    assert MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"


def test_champion_moves_only_on_improvement(tracking, tmp_path):
    name = "det-aliases"

    def register(folder: str, value: float) -> dict:
        return log_and_register_model(_detector_dir(tmp_path, folder, 0.0), registered_model_name=name,
                                         validation_metric="val/mean_acc", validation_value=value,
                                         pip_requirements=[])

    first = register("v1", 0.70)
    assert (first["version"], first["champion_version"]) == (1, 1)
    assert first["aliases"] == ["candidate", "champion"]

    better = register("v2", 0.80)
    assert (better["version"], better["champion_version"]) == (2, 2)
    assert better["aliases"] == ["candidate", "champion"]

    worse = register("v3", 0.75)
    assert (worse["version"], worse["champion_version"], worse["aliases"]) == (3, 2, ["candidate"])

    client = MlflowClient()
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2
    assert int(client.get_model_version_by_alias(name, "candidate").version) == 3
    tags = client.get_model_version(name, "3").tags
    assert tags["validation_metric"] == "val/mean_acc" and float(tags["validation_value"]) == 0.75

    # The raw detector files are downloadable as plain run artifacts too.
    files = {f.path for f in client.list_artifacts(worse["run_id"], "model_files")}
    assert files == {"model_files/config.json", "model_files/weights.safetensors"}


def test_lower_is_better_direction(tracking, tmp_path):
    name = "det-loss"
    kwargs = dict(registered_model_name=name, validation_metric="val/loss", greater_is_better=False,
                  pip_requirements=[])
    log_and_register_model(_detector_dir(tmp_path, "a", 0.0), validation_value=0.5, **kwargs)
    assert log_and_register_model(_detector_dir(tmp_path, "b", 0.0), validation_value=0.6, **kwargs)[
        "champion_version"] == 1
    assert log_and_register_model(_detector_dir(tmp_path, "c", 0.0), validation_value=0.4, **kwargs)[
        "champion_version"] == 3


def test_versions_selected_on_different_metrics_prefer_validation(tracking, tmp_path):
    """A run without a validation split (selected on train/loss) never displaces a validated champion;
    a validated version displaces a champion that was not validated."""
    name = "det-metrics"

    def register(folder, metric, value, greater):
        return log_and_register_model(_detector_dir(tmp_path, folder, 0.0), registered_model_name=name,
                                      validation_metric=metric, validation_value=value, greater_is_better=greater,
                                      pip_requirements=[])

    assert register("t1", "train/loss", 0.3, False)["champion_version"] == 1
    assert register("v2", "val/auc", 0.6, True)["champion_version"] == 2       # validated beats unvalidated
    assert register("t3", "train/loss", 0.01, False)["champion_version"] == 2  # and is not displaced by it
    assert register("v4", "val/ap", 0.99, True)["champion_version"] == 2       # other val metric: not comparable


def test_champion_round_trip_through_pyfunc(tracking, tmp_path):
    name = "det-roundtrip"
    log_and_register_model(_detector_dir(tmp_path, "m", 0.25), registered_model_name=name,
                              validation_metric="val/acc", validation_value=0.9, pip_requirements=[])
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    images[1] = 255
    np.testing.assert_allclose(model.predict(images), [0.25, 1.0, 0.25], rtol=1e-6)

    paths = []
    for index, colour in enumerate(((0, 0, 0), (255, 255, 255))):
        path = tmp_path / f"img{index}.png"
        Image.new("RGB", (10 + index, 7), colour).save(path)  # different sizes are fine
        paths.append(str(path))
    np.testing.assert_allclose(model.predict(pd.DataFrame({"path": paths})), [0.25, 1.0], rtol=1e-6)


def test_log_evaluation_metrics_and_artifacts(tracking):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"generator": np.repeat(["sd v1.4", "progan"], 50),
                          "label": rng.integers(0, 2, 100), "score": rng.random(100)})
    summary = summarise(frame, "generator")
    table = group_table(frame, "generator")
    figures = {"roc": b"\x89PNG fake", "confusion.png": b"\x89PNG fake"}
    with active_or_new_run("genguard-eval", "eval") as run:
        logged = log_evaluation(summary, table, figures, group_column="generator")
        log_evaluation(summary, table, figures, prefix="jpeg_75", group_column="generator")

    client = MlflowClient()
    metrics = client.get_run(run.info.run_id).data.metrics
    for key in ("test/acc", "test/ap", "test/auc", "test/mean_acc", "test/mean_ap",
                "test/progan/acc", "test/progan/ap", "test/sd v1.4/r_acc", "jpeg_75/test/mean_acc"):
        assert key in metrics, key
    assert metrics["test/mean_acc"] == pytest.approx(summary["mean_acc"])
    assert set(logged) <= set(metrics)

    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"per_generator.csv", "per_generator.json", "metrics.json", "plots", "jpeg_75"} <= top
    plots = {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/roc.png", "plots/confusion.png"}
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json"))
    assert json.loads(local.read_text())["mean_acc"] == pytest.approx(summary["mean_acc"])


def test_log_evaluation_needs_a_run(tracking):
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        log_evaluation({}, pd.DataFrame({"generator": []}), {}, group_column="generator")


def test_log_params_flat_skips_duplicates_and_refuses_changes(tracking):
    with active_or_new_run("genguard-params", "params") as run:
        sent = log_params_flat({"train": {"lr": 1e-4, "epochs": 2}, "seed": 0}, prefix="pin_clip")
        assert sent == {"pin_clip.train.lr": "0.0001", "pin_clip.train.epochs": "2", "pin_clip.seed": "0"}
        assert log_params_flat({"train": {"lr": 1e-4}}, prefix="pin_clip") == {}
        with pytest.raises(ValueError, match="pin_clip.train.lr"):
            log_params_flat({"train": {"lr": 1e-3}}, prefix="pin_clip")
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert params["pin_clip.train.epochs"] == "2"


def test_safe_metric_name():
    assert safe_metric_name("test/Glide:100@10/acc") == "test/Glide_100_10/acc"
    assert safe_metric_name("test/../x") == "test/__/x"
    assert safe_metric_name("/a//b/") == "a/b"
