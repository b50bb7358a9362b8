"""`dvc repro` on a fresh clone: runs every stage, then is up to date, then reruns only what a change touches."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.slow


def _sh(args, cwd, env):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of the working tree (tracked + untracked, not ignored), tiny params via conf/local."""
    path = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, path / name)
    for override in (ROOT / "conf" / "test").glob("*.yml"):  # `local` is the default run env
        shutil.copy(override, path / "conf" / "local" / override.name)
    local = path / "conf" / "local" / "parameters.yml"
    tiny = yaml.safe_load(local.read_text())
    tiny["data"]["embedded"].pop("out_dir")  # keep the folders dvc.yaml names as the stage's outs
    tiny.pop("backbone_prior")
    local.write_text(yaml.safe_dump(tiny))
    for method in ("pin_clip", "univfd", "ns_net", "dgs_net"):  # ... and the one prior every detector reads
        detector = path / "conf" / "local" / f"parameters_{method}.yml"
        params = yaml.safe_load(detector.read_text())
        params[method]["model"]["backbone"].pop("pretrained")
        detector.write_text(yaml.safe_dump(params))
    face = path / "conf" / "local" / "parameters_face_data.yml"
    tiny_face = yaml.safe_load(face.read_text())
    tiny_face["face_data"]["embedded"].pop("out_dir")
    face.write_text(yaml.safe_dump(tiny_face))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_ARTIFACT_ROOT", None)
    _sh(["git", "init", "-q"], path, env)
    _sh(["git", "add", "-A"], path, env)
    _sh(["git", "commit", "-qm", "clone"], path, env)
    return path, env


# + aigi_data upstream; univfd, ns_net, dgs_net and aigi_benchmark (which trains every detector again): the
# same shapes, left out to keep the suite's time (their stage shapes are checked below).
STAGES = ("pin_clip",)


def test_repro_runs_all_then_is_up_to_date_then_reruns_only_the_changed_stage(clone):
    path, env = clone
    first = _sh(["dvc", "repro", *STAGES], path, env)
    for stage in ("aigi_data", *STAGES):
        assert f"Running stage '{stage}'" in first
    assert (path / "data" / "08_reporting" / "pin_clip" / "metrics.json").is_file()
    assert (path / "dvc.lock").is_file()
    assert "up to date" in _sh(["dvc", "status", *STAGES], path, env).lower()
    second = _sh(["dvc", "repro", *STAGES], path, env)
    assert "Running stage" not in second

    params_file = path / "conf" / "base" / "parameters_pin_clip.yml"
    params = yaml.safe_load(params_file.read_text())
    params["pin_clip"]["train"]["lr"] = params["pin_clip"]["train"]["lr"] * 2
    params_file.write_text(yaml.safe_dump(params))
    status = _sh(["dvc", "status", *STAGES], path, env)
    assert "pin_clip" in status
    assert "aigi_data:" not in status
    third = _sh(["dvc", "repro", "pin_clip"], path, env)
    assert "Running stage 'pin_clip'" in third
    assert "Running stage 'aigi_data'" not in third
    metrics = _sh(["dvc", "metrics", "show"], path, env)
    assert "mean_acc" in metrics


def test_face_stages_repro_and_keep_the_crop_cache(clone):
    """The face dataset stage's crop cache is a persist output: DVC keeps it across reruns."""
    path, env = clone
    first = _sh(["dvc", "repro", "face_dataset"], path, env)  # (a detector stage on top: the AIGI test's shape)
    assert "Running stage 'face_dataset'" in first
    crops = path / "data" / "02_intermediate" / "face_crops"
    marker = crops / "kept.txt"
    marker.write_text("a crop cached by an earlier run")
    params_file = path / "conf" / "base" / "parameters_face_data.yml"
    params = yaml.safe_load(params_file.read_text())
    params["face_data"]["min_side"] = 31
    params_file.write_text(yaml.safe_dump(params))
    second = _sh(["dvc", "repro", "face_dataset"], path, env)
    assert "Running stage 'face_dataset'" in second
    assert marker.read_text() == "a crop cached by an earlier run"


def test_every_stage_runs_a_registered_pipeline_on_existing_code_and_params():
    """The stages the repro test leaves out are checked for shape: pipeline, deps, params keys."""
    from genguard.pipeline_registry import register_pipelines

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    pipelines = register_pipelines()
    assert {"ns_net", "dgs_net", "aigi_benchmark"} <= set(stages)
    for name, stage in stages.items():
        # A stage may start part-way (reveal reads the bench reveal_bench wrote: --from-nodes).
        command, _, start = stage["cmd"].partition(" --from-nodes=")
        assert command == f"kedro run --pipelines={name}" and name in pipelines, name
        if start:  # the part it runs writes none of the outputs its upstream stage owns
            nodes = pipelines[name].from_nodes(start).nodes
            assert start in {node.name for node in nodes}, (name, start)
            assert not {"reveal_bench_records", "aigi_data.manifest"} & {o for n in nodes for o in n.outputs}
        for dep in stage["deps"]:
            assert (ROOT / dep).exists() or dep.startswith("data/"), (name, dep)
        for entry in stage.get("params", []):
            for file, keys in entry.items():
                document = yaml.safe_load((ROOT / file).read_text())
                for key in keys:
                    node = document
                    for part in key.split("."):
                        node = node[part]  # KeyError names a stale params key


def test_dvc_yaml_is_what_the_pipeline_registry_generates(monkeypatch, tmp_path):
    """One list of methods: dvc.yaml follows the registry, and a test fails when they disagree."""
    from genguard import dvc_stages
    from genguard.families.aigi import DETECTORS as AIGI
    from genguard.families.face import DETECTORS as FACE

    assert dvc_stages.main(["--check"]) == 0
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {*AIGI, "aigi_data", "aigi_benchmark", *FACE, "face_dataset", "deepfake_benchmark",
            "t2i_testbed", "ticoe", "set", "tlga", "reveal_bench", "reveal"} == set(stages)
    # a hand-edited dvc.yaml (a stage dropped) is caught
    stale = tmp_path / "dvc.yaml"
    document = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    document["stages"].pop("ns_net")
    stale.write_text(yaml.safe_dump(document))
    monkeypatch.setattr(dvc_stages, "DVC_FILE", stale)
    assert dvc_stages.main(["--check"]) == 1


def test_each_detector_stage_depends_on_its_own_method_and_the_shared_code_only():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = set(stages["ns_net"]["deps"])
    assert "src/genguard/families/aigi/methods/ns_net.py" in deps
    assert "src/genguard/families/aigi/methods/pin_clip.py" not in deps  # another method's edit reruns nothing here
    for core in ("training", "evaluation", "data", "io", "tracking", "models"):
        assert f"src/genguard/{core}" in deps
    assert {"conf/base/parameters_ns_net.yml": ["ns_net"]} in stages["ns_net"]["params"]
