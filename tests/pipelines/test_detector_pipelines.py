"""Every detector pipeline end to end through real Kedro sessions, on the tiny embedded dataset."""

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from genguard.data.manifest import DataValidationError

from .conftest import ROOT, run_session

pytestmark = pytest.mark.slow
GENERATORS = {"vae_recon", "gan_upsampler", "diffusion_sdedit", "diffusion_sample"}
METHODS = ("univfd", "pin_clip", "ns_net", "dgs_net")


@pytest.fixture(scope="module")
def trained(project):
    for method in METHODS:
        run_session(project, method)
    return project


def _client(project: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return MlflowClient()


@pytest.mark.parametrize("method", METHODS)
def test_pipeline_writes_model_metrics_and_plots(trained, method):
    report = trained / "data" / "08_reporting" / method
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert {row["generator"] for row in evaluation["per_group"]} >= GENERATORS  # + the "mean" row
    assert 0.0 <= evaluation["mean_acc"] <= 1.0 and "jpeg_75" in evaluation["conditions"]
    metrics = json.loads((report / "metrics.json").read_text())  # what `dvc metrics show` prints: a few numbers
    assert set(metrics) == {"auc", "mean_acc", "mean_ap", "held_out_mean_acc", "held_out_mean_ap"}
    assert metrics["mean_acc"] == pytest.approx(evaluation["mean_acc"], abs=1e-6)
    assert {p.name for p in (report / "plots").glob("*.png")} >= {"roc_curve.png", "score_histogram.png",
                                                                   "confusion_matrix.png"}
    assert json.loads((report / "roc.json").read_text())["roc"][0] == {"fpr": 0.0, "tpr": 0.0}
    model_dir = trained / "data" / "06_models" / method
    assert (model_dir / "weights.safetensors").is_file() and (model_dir / "config.json").is_file()
    validation = json.loads((report / "data_validation.json").read_text())
    assert validation["success"] is True


def test_frozen_backbone_features_are_cached_once(trained):
    from safetensors.torch import load_file

    cache = load_file(str(trained / "data" / "04_feature" / "univfd" / "features.safetensors"))
    manifest = pd.read_parquet(trained / "data" / "03_primary" / "univfd" / "manifest.parquet")
    from genguard.data.splits import protocol_splits

    used = pd.concat(protocol_splits(manifest, group_column="generator", train_groups=["gan_upsampler"]).values())
    assert cache["features"].shape[0] == len(used) < len(manifest)  # each used image encoded once
    assert load_file(str(trained / "data" / "04_feature" / "pin_clip" / "features.safetensors"))[
        "features"].numel() == 0  # fine-tuned backbone: nothing to cache


def test_mlflow_runs_have_params_metrics_artifacts_and_registered_models(trained):
    client = _client(trained)
    experiment = client.get_experiment_by_name("genguard")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])
            if "mlflow.parentRunId" not in r.data.tags}  # aigi_benchmark's child runs share the names
    assert {"univfd", "pin_clip"} <= set(runs)
    pin = runs["pin_clip"]
    assert pin.data.params["pin_clip.train.lr"] and pin.data.params["data.source"] == "embedded"
    for generator in GENERATORS:
        assert f"test/{generator}/acc" in pin.data.metrics and f"test/{generator}/ap" in pin.data.metrics
    history = client.get_metric_history(pin.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(pin.info.run_id, "plots")}
    assert "plots/roc_curve.png" in artifacts
    for method in ("univfd", "pin_clip"):
        version = client.get_model_version_by_alias(f"genguard-{method}", "candidate")
        assert client.get_model_version_by_alias(f"genguard-{method}", "champion").version == version.version


def test_the_backbone_prior_is_built_once_registered_and_embeds_images(trained):
    """Four detector pipelines name the same LiT prior: the first builds it, the others find it cached."""
    client = _client(trained)
    versions = client.search_model_versions("name = 'genguard-lit-effnet-lite0'")
    assert len(versions) == 1
    run = client.get_run(versions[0].run_id)
    metrics = run.data.metrics
    assert run.info.run_name == "backbone_prior" and "mlflow.parentRunId" in run.data.tags
    assert metrics["backbone_prior/retrieval_train"] > 5 * metrics["backbone_prior/retrieval_chance"]
    for method in METHODS:
        summary = json.loads((trained / "data" / "08_reporting" / method / "train_summary.json").read_text())
        assert summary["backbone_prior"]["built"] is (method == METHODS[0])
    embedder = mlflow.pyfunc.load_model(f"models:/genguard-lit-effnet-lite0/{versions[0].version}")
    embeddings = embedder.predict(np.full((2, 64, 64, 3), 128, dtype=np.uint8))
    assert embeddings.shape == (2, 1280) and np.isfinite(embeddings).all()


@pytest.mark.parametrize("method", ["pin_clip", "ns_net", "dgs_net"])
def test_registered_champion_loads_back_and_reproduces_pipeline_scores(trained, method):
    """Includes NS-Net, which classifies with each image's caption: the model captions the images itself."""
    _client(trained)
    scores = pd.read_parquet(trained / "data" / "07_model_output" / method / "scores.parquet")
    clean = scores[scores["condition"] == "clean"].head(8)
    os.chdir(trained)  # manifest paths are relative to the project
    try:
        model = mlflow.pyfunc.load_model(f"models:/genguard-{method}@champion")
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in clean["path"]])
        predicted = model.predict(images)
    finally:
        os.chdir(ROOT)
    np.testing.assert_allclose(predicted, clean["score"].to_numpy(), atol=1e-5)


def test_a_second_version_becomes_candidate_and_champion_follows_the_validation_metric(trained):
    run_session(trained, "univfd", runtime_params={"univfd.train.epochs": 1})
    client = _client(trained)
    versions = {int(v.version): v for v in client.search_model_versions("name='genguard-univfd'")}
    assert max(versions) >= 2
    assert int(client.get_model_version_by_alias("genguard-univfd", "candidate").version) == max(versions)
    champion = client.get_model_version_by_alias("genguard-univfd", "champion")
    values = {n: float(v.tags["validation_value"]) for n, v in versions.items()}
    assert values[int(champion.version)] == max(values.values())


def test_notebook_compares_the_detectors(trained):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "compare_detectors.ipynb", as_version=4)
    os.environ["GENGUARD_PROJECT_ROOT"] = str(trained)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{trained / 'mlruns' / 'mlflow.db'}"
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "saved" in outputs and (trained / "data" / "08_reporting" / "detector_comparison.png").is_file()


def _real_fake_folder(folder: Path, per_class: int) -> Path:
    """A user folder in the plain real/ fake/ layout."""
    for cls, shade in (("real", 60), ("fake", 200)):
        (folder / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (48, 48), (shade, i * 10, 90)).save(folder / cls / f"{i}.png")
    return folder


def test_corrupt_user_image_stops_the_run_before_training_and_keeps_earlier_outputs(trained, tmp_path):
    folder = _real_fake_folder(tmp_path / "mine", per_class=12)
    good = (folder / "fake" / "3.png").read_bytes()
    (folder / "fake" / "3.png").write_bytes(good[: len(good) // 2])  # truncated download
    (folder / "real" / "empty.png").write_bytes(b"")
    model_dir = trained / "data" / "06_models" / "pin_clip"
    before = (model_dir / "weights.safetensors").read_bytes()
    with pytest.raises(DataValidationError) as failure:
        run_session(trained, "pin_clip", runtime_params={"data.source": str(folder)})
    message = str(failure.value)
    assert "3.png" in message and "truncated" in message and "empty.png" in message
    assert (model_dir / "weights.safetensors").read_bytes() == before  # earlier model untouched
    report = json.loads((trained / "data" / "08_reporting" / "pin_clip" / "data_validation.json").read_text())
    assert report["success"] is False


def test_excluded_bad_files_are_listed_and_the_run_goes_on(trained, tmp_path):
    folder = _real_fake_folder(tmp_path / "mine", per_class=14)
    (folder / "fake" / "notes.png").write_text("not really a picture")
    run_session(trained, "univfd", runtime_params={"data.source": str(folder), "data.on_bad_file": "exclude",
                                                   "univfd.train.epochs": 1})
    report = json.loads((trained / "data" / "08_reporting" / "univfd" / "data_validation.json").read_text())
    assert [Path(bad["path"]).name for bad in report["bad_files"]["files"]] == ["notes.png"]
    assert "not an image" in report["bad_files"]["files"][0]["reason"]
    manifest = pd.read_parquet(trained / "data" / "03_primary" / "univfd" / "manifest.parquet")
    assert not manifest["path"].str.endswith("notes.png").any() and len(manifest) == 28


def test_same_seed_same_data_gives_identical_metrics(trained, tmp_path):
    """Train + evaluate PiN-CLIP twice from scratch (fresh checkpoint folders): identical metrics."""
    import yaml

    from genguard.pipelines.aigi import nodes

    conf = trained / "conf"
    params = yaml.safe_load((conf / "base" / "parameters_pin_clip.yml").read_text())["pin_clip"]
    base = yaml.safe_load((conf / "base" / "parameters.yml").read_text())
    data, prior_params = base["data"], base["backbone_prior"]
    # the test world's prior (conf/test), which the pipeline runs above built
    params["model"]["backbone"].update(
        yaml.safe_load((conf / "test" / "parameters_pin_clip.yml").read_text())["pin_clip"]["model"]["backbone"])
    params["train"].update(epochs=2, batch_size=16)
    manifest = pd.read_parquet(trained / "data" / "03_primary" / "pin_clip" / "manifest.parquet")
    os.chdir(trained)
    try:
        runs = []
        nodes.prepare_backbone(manifest, params["model"], prior_params)  # the runs on other data rebuilt it
        for attempt in range(2):
            prior = nodes.prepare_backbone(manifest, params["model"], prior_params)
            assert not prior["built"]  # same data, same recipe: found by its key
            features = nodes.cache_features(manifest, params["model"], data)
            detector, _ = nodes.train_detector(manifest, features, params["model"], params["train"], params["augment"],
                                               data, str(tmp_path / f"ckpt{attempt}"), prior)
            _, summary, *_ = nodes.evaluate_detector(detector, manifest, features, {"conditions": []}, data)
            runs.append(summary)
    finally:
        os.chdir(ROOT)
    assert runs[0] == runs[1]
    assert runs[0]["n"] > 0


def test_univfd_with_an_augmented_bank_trains_on_cached_copies(trained):
    """UnivFD's recipe at paper scale: K augmented copies per training image, encoded once."""
    from safetensors.torch import load_file

    run_session(trained, "univfd", runtime_params={"univfd.augment.bank": 2, "univfd.train.epochs": 2})
    cache = load_file(str(trained / "data" / "04_feature" / "univfd" / "features.safetensors"))
    bank, clean = cache["features@bank"], cache["features"]
    assert bank.shape[0] == 2 and bank.shape[1] == cache["row_sha256@bank"].shape[0] and bank.shape[2] == clean.shape[1]
    assert not torch.allclose(bank[0], bank[1])  # two different copies of each training image
