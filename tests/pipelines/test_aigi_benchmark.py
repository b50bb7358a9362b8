"""`kedro run --pipeline=aigi_benchmark`: every detector on every generator, one leaderboard, runs nested."""

import json

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from genguard.evaluation.leaderboard import LeaderboardError
from genguard.families.aigi import DETECTORS as AIGI_DETECTORS
from genguard.pipelines.aigi import benchmark as nodes

from .conftest import run_session

pytestmark = pytest.mark.slow
GENERATORS = ["diffusion_sample", "diffusion_sdedit", "gan_upsampler", "vae_recon"]
CONDITIONS = ["clean", "jpeg_75", "blur_1"]  # conf/test/parameters_aigi_benchmark.yml


@pytest.fixture(scope="module")
def benchmarked(project):
    run_session(project, "aigi_benchmark")
    return project


def test_leaderboard_covers_every_detector_generator_and_condition(benchmarked):
    report = benchmarked / "data" / "08_reporting" / "aigi_benchmark"
    board = pd.read_csv(report / "leaderboard.csv")
    assert sorted(board["system"].unique()) == sorted(AIGI_DETECTORS)
    assert len(board) == len(AIGI_DETECTORS) * len(CONDITIONS)
    for generator in GENERATORS:
        assert board[f"{generator}/acc"].notna().all() and board[f"{generator}/ap"].notna().all()
    markdown = (report / "leaderboard.md").read_text()
    assert all(name in markdown for name in [*AIGI_DETECTORS, *GENERATORS, "gan_upsampler (train)"])
    assert {p.name for p in (report / "plots").glob("*.png")} == {"heatmap_acc.png", "heatmap_ap.png"}
    metrics = json.loads((report / "leaderboard_metrics.json").read_text())  # small: what `dvc metrics show` prints
    assert set(metrics) == set(AIGI_DETECTORS)
    assert all(set(values) == {"rank", "mean_acc", "mean_ap", "held_out_acc", "held_out_ap"}
               for values in metrics.values())
    assert sorted(values["rank"] for values in metrics.values()) == [1, 2, 3, 4]
    records = json.loads((report / "leaderboard_plot.json").read_text())["leaderboard"]
    assert len(records) == len(AIGI_DETECTORS) * len(CONDITIONS) * (len(GENERATORS) + 1)


def test_one_parent_run_with_a_child_run_per_detector(benchmarked):
    mlflow.set_tracking_uri(f"sqlite:///{benchmarked / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.`genguard.benchmark` = 'aigi_benchmark'")
    latest = {}
    for run in sorted(children, key=lambda r: r.info.start_time):
        latest[run.data.tags["genguard.detector"]] = run
    assert sorted(latest) == sorted(AIGI_DETECTORS)
    parents = {run.data.tags["mlflow.parentRunId"] for run in latest.values()}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert "univfd/mean_acc" in parent.data.metrics
    shared = json.loads(open(client.download_artifacts(parent.info.run_id, "leaderboard/shared_features.json")).read())
    assert shared["frozen_detectors"] == ["univfd"]
    assert "leaderboard/leaderboard.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "leaderboard")}
    for run in latest.values():  # the shared evaluation logger: clean and every condition
        assert {"test/mean_acc", "test_jpeg_75/mean_acc", "test_blur_1/mean_ap"} <= set(run.data.metrics)


def test_a_failed_detector_fails_the_benchmark_and_keeps_the_last_leaderboard(benchmarked):
    leaderboard = benchmarked / "data" / "08_reporting" / "aigi_benchmark" / "leaderboard.csv"
    before = leaderboard.read_bytes()
    with pytest.raises(ValueError, match="train.backend"):
        run_session(benchmarked, "aigi_benchmark", runtime_params={"dgs_net.train.backend": "bogus"})
    assert leaderboard.read_bytes() == before


def test_a_generator_without_results_fails_the_leaderboard(benchmarked):
    manifest = pd.read_parquet(benchmarked / "data" / "03_primary" / "aigi_benchmark" / "manifest.parquet")
    results = [pd.DataFrame({"detector": ["univfd"], "condition": ["clean"], "generator": [g], "acc": [0.5],
                             "r_acc": [0.5], "f_acc": [0.5], "ap": [0.5]}) for g in GENERATORS[:3]]
    data = {"source": "embedded", "embedded": {}}
    shared = {"report": {}}
    with pytest.raises(LeaderboardError, match="vae_recon"):
        nodes.build_leaderboard(manifest, data, {"conditions": ["clean"]}, shared, pd.concat(results))
    with pytest.raises(LeaderboardError, match="midjourney"):  # a configured family that never showed up
        nodes.build_leaderboard(manifest, data, {"conditions": ["clean"], "generators": [*GENERATORS, "midjourney"]},
                                shared, pd.concat(results))


def test_frozen_detectors_with_one_backbone_and_input_share_one_feature_cache(benchmarked, monkeypatch):
    import yaml

    monkeypatch.chdir(benchmarked)
    manifest = pd.read_parquet(benchmarked / "data" / "03_primary" / "aigi_benchmark" / "manifest.parquet")
    data = yaml.safe_load((benchmarked / "conf" / "base" / "parameters.yml").read_text())["data"]
    backbone = {"name": "genguard-tiny-vit", "pretrained": None}
    univfd = {"method": "univfd", "backbone": backbone, "options": {}}
    frozen_ns = {"method": "ns_net", "backbone": backbone,  # NS-Net's frozen-encoder option, same input
                 "options": {"lora_rank": 0, "patch_selection": None, "normalisation": "backbone"}}
    conditions = {"conditions": ["clean", "jpeg_75"]}
    shared = nodes.encode_shared_features(manifest, data, conditions, {}, {"model": univfd}, {"model": frozen_ns})
    assert shared["caches"]["univfd"] is shared["caches"]["ns_net"]
    report = shared["report"]
    assert len(report["feature_keys"]) == 1 and report["feature_keys"][0]["detectors"] == ["univfd", "ns_net"]
    assert report["encoder_images_saved_by_sharing"] == report["feature_keys"][0]["images_encoded"] > 0
    alone = nodes.encode_shared_features(manifest, data, conditions, {}, {"model": univfd})
    for key, tensor in alone["caches"]["univfd"].items():
        assert torch.equal(tensor, shared["caches"]["ns_net"][key]), key
