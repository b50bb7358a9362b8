import os

# Set before anything imports kedro/mlflow/transformers: no network, no telemetry, CPU DeepSpeed.
for key, value in {
    "KEDRO_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "TQDM_DISABLE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",  # spinning OpenMP threads stall torch on 2 shared cores
}.items():
    os.environ.setdefault(key, value)

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_BACKBONE = {"name": "genguard-tiny-vit", "pretrained": None}


@pytest.fixture
def tiny_backbone() -> dict:
    return dict(TINY_BACKBONE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
