"""The text-to-image pipelines end to end through real Kedro sessions (``--env=test``), on the tiny testbed
the session fixture trained (its cache folders are handed to the runs, so nothing trains twice): outputs,
the erasure and detection tables, MLflow registration and the pyfunc, and bad input failing by name."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from genguard.data.manifest import DataValidationError

from .conftest import run_session

pytestmark = pytest.mark.slow


def _cached(t2i_trained) -> dict:
    params = t2i_trained.params
    return {"t2i.captions.out_dir": params["captions"]["out_dir"], "t2i.cache_dir": params["cache_dir"],
            "t2i.evaluator.cache_dir": params["evaluator"]["cache_dir"]}


def test_testbed_pipeline_evaluates_registers_and_serves(project, t2i_trained):
    run_session(project, "t2i_testbed", runtime_params=_cached(t2i_trained))
    report = project / "data/08_reporting/t2i_testbed"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["following_colour"] >= 0.9 and metrics["alignment_matched"] > metrics["alignment_shuffled"]
    assert (report / "plots/samples.png").is_file()
    registration = json.loads((report / "registration.json").read_text())
    assert "candidate" in registration["aliases"]
    model = mlflow.pyfunc.load_model(registration["model_uri"])
    images = model.predict(pd.DataFrame({"prompt": ["a red circle", "a blue square"], "seed": [1, 2]}))
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    again = model.predict(pd.DataFrame({"prompt": ["a red circle"], "seed": [1]}))  # alone: same image (+-1 level)
    assert np.abs(again[0].astype(int) - images[0].astype(int)).max() <= 1


def test_ticoe_pipeline_tables_every_method_against_the_original(project, t2i_trained):
    run_session(project, "ticoe", runtime_params=_cached(t2i_trained))
    report = project / "data/08_reporting/ticoe"
    table = pd.read_csv(report / "table.csv").set_index("method")
    assert list(table.index) == ["original", "ticoe", "esd", "uce"]
    for column in ("target_rate", "unrelated_following", "unrelated_alignment", "unrelated_fd", "attack_rate"):
        assert table[column].notna().all(), column
    assert table.loc["ticoe", "target_rate"] < table.loc["original", "target_rate"]
    assert "| original |" in (report / "table.md").read_text()
    assert (report / "plots/same_seed_grid.png").is_file()
    assert json.loads((report / "registration.json").read_text())["name"] == "genguard-ticoe"


def test_set_pipeline_reports_each_attack_with_its_baseline_and_control(project, t2i_trained):
    run_session(project, "set", runtime_params=_cached(t2i_trained))
    report = project / "data/08_reporting/set"
    table = pd.read_csv(report / "table.csv")
    assert set(table["attack"]) == {"rickrolling", "implicit_trigger"}
    assert set(table["detector"]) == {"set", "t2ishield_ftt", "set_on_clean_model"}
    assert table[["auroc", "acc", "f1", "fpr"]].notna().all().all()
    injection = json.loads((report / "injection_report.json").read_text())
    assert all(a["attack_success_rate"] > a["target_rate_on_clean_model"] for a in injection["attacks"].values())
    assert json.loads((report / "registration.json").read_text())["name"] == "genguard-set"


def test_a_concept_outside_the_vocabulary_fails_before_any_erasure(project, t2i_trained):
    with pytest.raises(DataValidationError, match="'hexagon' is not in the vocabulary"):
        run_session(project, "ticoe", runtime_params={**_cached(t2i_trained), "ticoe.target.concept": "hexagon"})
