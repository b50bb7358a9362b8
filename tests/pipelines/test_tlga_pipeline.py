"""``kedro run --pipeline=tlga --env=test`` end to end (once per session, about a minute), then the paper's
claims as the embedded default measures them, read from the run's own outputs.

Where the measured outcome disagrees with the paper (J-TLGA lowering accuracy at least as much as PGD), the
test asserts the mechanism instead - J-TLGA moves the routing more than PGD and is a real attack - and the
issue note reports the measured ordering.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from genguard.data.manifest import DataValidationError

from ..conftest import _merged
from .conftest import make_project, run_session


def _test_params(project: Path) -> dict:
    import yaml

    base = yaml.safe_load((project / "conf/base/parameters_tlga.yml").read_text())["tlga"]
    return _merged(base, yaml.safe_load((project / "conf/test/parameters_tlga.yml").read_text())["tlga"])


@pytest.fixture(scope="module")
def tlga_run(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("tlga"))
    run_session(project, "tlga")
    return SimpleNamespace(project=project, params=_test_params(project),
                           grid=pd.read_csv(project / "data/08_reporting/tlga/grid.csv"))


def _cell(grid: pd.DataFrame, system: str, condition: str) -> pd.Series:
    rows = grid[(grid["system"] == system) & (grid["condition"] == condition) & (grid["group"] == "mean")]
    assert len(rows) == 1, (system, condition)
    return rows.iloc[0]


def test_the_run_writes_the_robustness_table_and_registers_j_tlat(tlga_run):
    project, params, grid = tlga_run.project, tlga_run.params, tlga_run.grid
    reports = project / "data/08_reporting/tlga"
    systems = [name for name, block in params["regimes"].items() if block is not None]
    conditions = ["clean", *[name for name, spec in params["attacks"].items() if spec is not None]]
    table = pd.read_csv(reports / "table.csv")
    assert list(table["system"].unique()) == systems and set(table["condition"]) == set(conditions)
    assert {f"mean/{m}" for m in ("acc", "forced_acc", "flip_rate", "weakest_rate")} <= set(table.columns)
    assert "| j_tlat |" in (reports / "table.md").read_text()
    assert {p.name for p in (reports / "plots").iterdir()} >= {"robust_accuracy.png", "expert_usage.png",
                                                              "training_curves.png"}
    registration = json.loads((reports / "registration.json").read_text())
    assert registration["name"] == "genguard-tlga-j_tlat-test" and registration["version"] >= 1
    # The registered pyfunc classifies clips like the model it was made from.
    import mlflow
    import torch

    from genguard.io.model_files import load_model_dir

    clips = torch.rand(3, 3, 8, 32, 32)
    predicted = mlflow.pyfunc.load_model(f"models:/{registration['name']}/{registration['version']}").predict(
        clips.numpy())
    model = load_model_dir(project / params["model_dir"] / "j_tlat").model.eval()
    with torch.no_grad():
        expected = model(clips).softmax(dim=1).numpy()
    assert predicted.shape == (3, 8) and abs(predicted - expected).max() < 1e-5
    # Every attack kept its budget on every clip.
    attacked = grid[grid["condition"] != "clean"]
    assert float(attacked["max_linf"].max()) <= params["attack"]["eps"] + 1e-6


def test_router_attacks_switch_more_routing_than_pgd(tlga_run):
    """Insight 1's mechanism: an attack on the router alone changes the expert choice of more clips than
    PGD on the whole model does, on every trained model."""
    grid = tlga_run.grid
    for system in grid["system"].unique():
        router = max(_cell(grid, system, name)["flip_rate"] for name in ("pgd_router", "tlga_router"))
        assert router > _cell(grid, system, "pgd")["flip_rate"], system


def test_j_tlga_attacks_the_routing_and_the_prediction(tlga_run):
    """Measured on the embedded default: J-TLGA does not lower accuracy as much as PGD - its guidance term
    (towards the least-confident expert) weakens it, monotonically in gamma1 (see the issue note) - so the test
    asserts what it does do: with and without guidance it switches the routing of more clips than PGD and is
    a real attack (the guidance's pull towards the weakest expert is tested on its own, first order)."""
    grid = tlga_run.grid
    j_tlga, j_tla, pgd, clean = (_cell(grid, "standard", name) for name in ("j_tlga", "j_tla", "pgd", "clean"))
    assert j_tlga["flip_rate"] > pgd["flip_rate"] and j_tla["flip_rate"] > pgd["flip_rate"]
    assert j_tlga["acc"] < clean["acc"] - 0.2 and j_tla["acc"] < clean["acc"] - 0.2


def test_j_tlat_is_more_robust_than_standard_training_and_smoother(tlga_run):
    grid = tlga_run.grid
    for attack in ("j_tlga", "pgd"):
        assert _cell(grid, "j_tlat", attack)["acc"] > _cell(grid, "standard", attack)["acc"] + 0.1, attack
    # The Lipschitz terms of J-TLAT: the router reacts less to the same attack.
    assert _cell(grid, "j_tlat", "pgd_router")["lips_r"] < _cell(grid, "standard", "pgd_router")["lips_r"]


def test_cost_and_training_reports(tlga_run):
    project = tlga_run.project
    cost = json.loads((project / "data/08_reporting/tlga/cost.json").read_text())
    assert cost["inference"]["flop_saving"] > 0.6  # router + 1 of 4 experts vs all 4
    assert cost["attacks"]["pgd_router"]["gflops_per_clip"] < cost["attacks"]["pgd"]["gflops_per_clip"]
    # Every trained regime reports its training (times are benchmarks' business, not a test's).
    assert set(cost["training"]) == {"warmup", "standard", "j_tlat"}
    assert all(record["epochs"] >= 1 and not record["cached"] for record in cost["training"].values())


def test_a_rerun_trains_nothing_and_a_corrupt_clip_is_named_before_training(tlga_run, tmp_path, monkeypatch):
    from genguard.pipelines.video import nodes

    project, params = tlga_run.project, tlga_run.params
    monkeypatch.chdir(project)
    manifest = pd.read_parquet(project / "data/03_primary/tlga/manifest.parquet")
    clips = nodes.decode_clips(manifest, params)
    monkeypatch.setattr(nodes, "fit", lambda *a, **k: pytest.fail("a cached model was retrained"))
    models, report = nodes.train_models(clips, params)
    assert set(models) == {"standard", "j_tlat"} and all(r["cached"] for r in report.values())

    rows = pd.concat([manifest[manifest["split"] == s].head(3) for s in ("train", "test")]).reset_index(drop=True)
    copies = []
    for path in rows["path"]:
        target = tmp_path / Path(path).parent.name / Path(path).name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
        copies.append(str(target))
    rows["path"] = copies
    broken = Path(copies[1])
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(DataValidationError, match=broken.name):
        nodes.validate_clips(rows, {"bad_files": []}, params, str(tmp_path / "reports"))
