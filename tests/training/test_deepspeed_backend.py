"""The DeepSpeed path, on CPU: real engine, 2 ranks over gloo (CI has no GPU, so this keeps it honest)."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from genguard.data.transforms import FeatureRows
from genguard.methods import build_detector
from genguard.training.deepspeed_backend import load_deepspeed_config
from genguard.training.engine import TrainConfig

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("method", ["pin_clip", "ns_net", "dgs_net"])
def test_gpu_profile_deepspeed_configs_build(method, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = yaml.safe_load((ROOT / "conf/gpu" / f"parameters_{method}.yml").read_text())[method]["train"]
    base = yaml.safe_load((ROOT / "conf/base" / f"parameters_{method}.yml").read_text())[method]["train"]
    cfg = TrainConfig.from_dict({**base, **params})
    ds = load_deepspeed_config(cfg.deepspeed, cfg)
    assert cfg.backend == "deepspeed" and cfg.deepspeed["num_gpus"] >= 1
    assert ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage"] in (1, 2, 3)
    assert ds["train_micro_batch_size_per_gpu"] == cfg.batch_size and "train_batch_size" not in ds


def test_every_shipped_zero_config_is_valid_json_without_optimizer():
    for path in sorted((ROOT / "conf/gpu/deepspeed").glob("*.json")):
        cfg = TrainConfig(batch_size=4, deepspeed={"config_file": str(path)})
        ds = load_deepspeed_config(cfg.deepspeed, cfg)
        assert "optimizer" not in ds, path


def test_deepspeed_config_with_optimizer_is_refused(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match="optimizer"):
        load_deepspeed_config({"config_file": str(bad)}, TrainConfig())
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_deepspeed_config({"config_file": str(tmp_path / "missing.json")}, TrainConfig())


@pytest.mark.slow
@pytest.mark.distributed
def test_two_cpu_ranks_train_a_real_deepspeed_engine(tmp_path, monkeypatch, tiny_backbone):
    from genguard.training.deepspeed_backend import fit_distributed

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    model = build_detector("univfd", backbone=tiny_backbone)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(128) % 2
    features = torch.randn(128, model.backbone.embed_dim, generator=g) + labels[:, None] * 0.8
    train, val = FeatureRows(features[:96], labels[:96]), FeatureRows(features[96:], labels[96:])
    head_before = model.head.weight.detach().clone()
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, backend="deepspeed",
                      deepspeed={"num_gpus": 2, "config": {"zero_optimization": {
                          "stage": 2, "overlap_comm": False, "reduce_scatter": False,
                          "contiguous_gradients": False}}})
    experiment = mlflow.create_experiment("ds-test", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        result = fit_distributed(model, train, val, cfg, checkpoint_dir=tmp_path / "ckpt")
    losses = [h["train/loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not torch.equal(model.head.weight.detach(), head_before)  # trained weights came back
    client = mlflow.tracking.MlflowClient()
    assert len(client.search_runs([experiment])) == 1  # ranks did not open runs of their own
    logged = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in logged] == [1, 2, 3]  # rank 0 only: one point per epoch
    summary = json.loads((tmp_path / "ckpt" / "deepspeed_job" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 2


@pytest.mark.slow
@pytest.mark.distributed
def test_dgs_net_gradient_surgery_trains_under_zero1_with_ranks_in_sync(tmp_path, monkeypatch):
    """The hook's deferred loss goes through engine.backward too, so its gradient is all-reduced."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from genguard.data.transforms import ManifestImages, Preprocess
    from genguard.training.deepspeed_backend import fit_distributed

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    torch.manual_seed(0)
    model = build_detector("dgs_net", backbone={"name": "genguard-tiny-vit-32"}, teacher_epochs=0,
                           patch_selection={"patch_size": 8, "grid": 4})
    rng = np.random.default_rng(0)
    paths = []
    for i in range(32):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256 if i % 2 else 64, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    frame = pd.DataFrame({"path": paths, "label": [i % 2 for i in range(32)]})
    preprocess = Preprocess(image_size=32, patch_selection={"patch_size": 8, "grid": 4})
    text = torch.randn(32, model.backbone.embed_dim)
    train = ManifestImages(frame, preprocess, hflip=True, train=True, extras={"text_features": text})
    model.begin_stage("student", train)
    lora_before = [p.detach().clone() for p in model.lora_parameters]
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, backend="deepspeed",
                      deepspeed={"num_gpus": 2, "config": {"zero_optimization": {"stage": 1}}})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    result = fit_distributed(model, train, None, cfg, checkpoint_dir=tmp_path / "ckpt", stage="student")
    assert all(np.isfinite(h["train/loss"]) for h in result.history)
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, model.lora_parameters, strict=True))  # LoRA learnt
    summary = json.loads((tmp_path / "ckpt" / "deepspeed_job" / "summary.json").read_text())
    assert summary["zero_stage"] == 1 and summary["ranks_in_sync"] is True
