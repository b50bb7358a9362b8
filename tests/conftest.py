import os

# Set before anything imports kedro/mlflow/transformers: no network, no telemetry, CPU DeepSpeed.
for key, value in {
    "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TQDM_DISABLE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads stall torch on 2 shared cores
}.items():
    os.environ.setdefault(key, value)
# Under pytest-xdist the suite runs one test file per core: one thread each (and in every subprocess a test
# starts), else the workers' torch threads fight over the same cores.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)

TINY_BACKBONE = {"name": "genguard-tiny-vit", "pretrained": None}


@pytest.fixture
def tiny_backbone() -> dict:
    return dict(TINY_BACKBONE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _merged(base: dict, override: dict) -> dict:
    """Kedro's soft merge of parameter files (nested dicts merge, everything else is replaced)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def t2i_test_params(name: str) -> dict:
    """A parameter block of the text-to-image family as ``--env=test`` sees it (conf/base + conf/test)."""
    from pathlib import Path

    import yaml

    root = Path(__file__).parents[1] / "conf"
    files = {"t2i": "parameters_t2i.yml", "ticoe": "parameters_ticoe.yml", "set": "parameters_set.yml"}
    base = yaml.safe_load((root / "base" / files[name]).read_text())[name]
    return _merged(base, yaml.safe_load((root / "test" / files[name]).read_text())[name])


@pytest.fixture(scope="session")
def t2i_trained(tmp_path_factory):
    """The tiny testbed of ``--env=test`` trained once per test session (about a minute), with its concept
    classifier and alignment scorer; its cache folders let the pipeline tests reuse it."""
    from types import SimpleNamespace

    from genguard.pipelines.t2i import nodes

    root = tmp_path_factory.mktemp("t2i")
    params = t2i_test_params("t2i")
    params["captions"]["out_dir"] = str(root / "captions")
    params["cache_dir"] = str(root / "testbed")
    params["evaluator"]["cache_dir"] = str(root / "evaluator")
    params["checkpoint_dir"] = str(root / "checkpoints")
    manifest = nodes.validate_captions(nodes.build_captions(params), params, str(root / "reports"))
    testbed, summary = nodes.prepare_testbed(manifest, params)
    evaluator, report = nodes.prepare_evaluator(manifest, testbed, params)
    return SimpleNamespace(params=params, manifest=manifest, testbed=testbed, summary=summary,
                           evaluator=evaluator, report=report, root=root)
