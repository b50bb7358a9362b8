"""The DeepSpeed path, on CPU: real engine, 2 ranks over gloo (CI has no GPU, so this keeps it honest)."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from genguard.data.datasets import FeatureRows
from genguard.evaluation.evaluators import BinaryEvaluator
from genguard.families.aigi.methods import build_detector
from genguard.training import TrainConfig, fit
from genguard.training.deepspeed_backend import launcher_command, load_deepspeed_config

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("method", ["pin_clip", "ns_net", "dgs_net"])
def test_gpu_profile_deepspeed_configs_build(method, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = yaml.safe_load((ROOT / "conf/gpu" / f"parameters_{method}.yml").read_text())[method]["train"]
    base = yaml.safe_load((ROOT / "conf/base" / f"parameters_{method}.yml").read_text())[method]["train"]
    cfg = TrainConfig.from_dict({**base, **params})
    ds = load_deepspeed_config(cfg.deepspeed, cfg)
    assert cfg.backend == "deepspeed" and cfg.deepspeed["num_gpus"] >= 1
    assert ds["bf16"]["enabled"] is (method != "dgs_net")  # DGS-Net: fp32, as its reference code
    assert ds["zero_optimization"]["stage"] in (1, 2, 3)
    # the global batch is split over the GPUs: 8 GPUs x 4 rows = the paper's batch 32
    assert ds["train_batch_size"] == cfg.batch_size == 32
    assert ds["train_micro_batch_size_per_gpu"] * cfg.deepspeed["num_gpus"] * ds["gradient_accumulation_steps"] == 32
    # DeepSpeed's own default clips at norm 1.0; the loop's config decides (None: never, as in-process)
    assert ds["gradient_clipping"] == (cfg.grad_clip_norm or 0.0)


def test_every_shipped_zero_config_is_valid_json_without_optimizer():
    for path in sorted((ROOT / "conf/gpu/deepspeed").glob("*.json")):
        cfg = TrainConfig(batch_size=4, deepspeed={"config_file": str(path)})
        ds = load_deepspeed_config(cfg.deepspeed, cfg)
        assert "optimizer" not in ds and "scheduler" not in ds, path


def test_deepspeed_config_with_optimizer_is_refused(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(ValueError, match="optimizer"):
        load_deepspeed_config({"config_file": str(bad)}, TrainConfig())
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_deepspeed_config({"config_file": str(tmp_path / "missing.json")}, TrainConfig())
    with pytest.raises(ValueError, match="num_gpus_per_node"):
        load_deepspeed_config({"num_gpus_per_node": 2}, TrainConfig())
    with pytest.raises(ValueError, match="multiple of 3"):  # a global batch of 32 cannot split over 3 ranks
        load_deepspeed_config({"num_gpus": 3}, TrainConfig(batch_size=32))


def test_launcher_command_single_node_and_multi_node(tmp_path):
    job = tmp_path / "job"
    single = launcher_command({"num_gpus": 4}, job, python="py", master_port=1234)
    assert single == ["py", "-m", "deepspeed.launcher.runner", "--num_gpus", "4", "--master_addr", "127.0.0.1",
                      "--master_port", "1234", "--module", "genguard.training.distributed_entry", "--job", str(job)]
    hostfile = tmp_path / "hostfile"
    multi = launcher_command({"num_gpus": 8, "num_nodes": 2, "hostfile": str(hostfile), "launcher": "openmpi",
                              "master_addr": "10.0.0.1"}, job, python="py", master_port=29500)
    assert multi[:3] == ["py", "-m", "deepspeed.launcher.runner"]
    assert multi[3:9] == ["--hostfile", str(hostfile), "--num_nodes", "2", "--launcher", "openmpi"]
    assert ["--num_gpus", "8", "--master_addr", "10.0.0.1"] == multi[9:13]
    # with a hostfile and no address the launcher takes the first host's (never loopback)
    assert "--master_addr" not in launcher_command({"num_nodes": 2, "hostfile": str(hostfile)}, job, python="py",
                                                   master_port=1)
    with pytest.raises(ValueError, match="hostfile"):
        launcher_command({"num_nodes": 2}, job)
    cfg = TrainConfig(batch_size=32, deepspeed={"num_gpus": 8, "num_nodes": 2, "hostfile": str(hostfile)})
    assert load_deepspeed_config(cfg.deepspeed, cfg)["train_micro_batch_size_per_gpu"] == 2  # 32 / 16 ranks


def _features(dim: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    return FeatureRows(torch.randn(n, dim, generator=g) + labels[:, None] * 0.3, labels)


@pytest.mark.slow
@pytest.mark.distributed
def test_in_process_and_two_deepspeed_ranks_agree(tmp_path, monkeypatch, tiny_backbone):
    """Same model, data, config: the same best round, close metrics and weights in-process and on 2 CPU
    ranks (ZeRO-2); rank 0 alone logs; a changed config never resumes the other one's checkpoint."""
    from genguard.training.deepspeed_backend import fit_distributed

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    torch.manual_seed(0)
    model = build_detector("univfd", backbone=tiny_backbone)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    dim = model.backbone.embed_dim
    train, val = _features(dim, 96, 0), _features(dim, 32, 1)
    common = dict(epochs=4, batch_size=16, lr=0.05, schedule={"name": "cosine"}, monitor="loss")
    local = fit(model, train, val, TrainConfig(**common), evaluator=BinaryEvaluator())
    local_weights = model.head.weight.detach().clone()

    model.load_state_dict(init)
    ds = {"num_gpus": 2, "config": {"zero_optimization": {
        "stage": 2, "overlap_comm": False, "reduce_scatter": False, "contiguous_gradients": False}}}
    cfg = TrainConfig(**common, backend="deepspeed", deepspeed=ds)
    experiment = mlflow.create_experiment("ds-test", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        remote = fit_distributed(model, train, val, cfg, checkpoint_dir=tmp_path / "ckpt", evaluator=BinaryEvaluator())
    assert remote.best["epoch"] == local.best["epoch"] and remote.best["metric"] == "val/loss"
    for mine, theirs in zip(local.history, remote.history, strict=True):
        for key in ("train/loss", "val/loss", "val/auc"):
            assert theirs[key] == pytest.approx(mine[key], abs=1e-5), key
    assert torch.allclose(model.head.weight.detach(), local_weights, atol=1e-5)  # the best round's weights
    summary = json.loads((tmp_path / "ckpt" / "deepspeed_job" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 2 and summary["selected"] == "best"
    client = mlflow.tracking.MlflowClient()
    assert len(client.search_runs([experiment])) == 1  # ranks did not open runs of their own
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")] == [1, 2, 3, 4]

    model.load_state_dict(init)  # another learning rate: another fingerprint, so the checkpoint is not resumed
    changed = TrainConfig(**{**common, "lr": 0.02}, backend="deepspeed", deepspeed=ds)
    fresh = fit_distributed(model, train, val, changed, checkpoint_dir=tmp_path / "ckpt", evaluator=BinaryEvaluator())
    assert fresh.resumed_from_epoch is None and len(fresh.history) == 4


@pytest.mark.slow
@pytest.mark.distributed
def test_dgs_net_surgery_steps_under_zero1_match_the_in_process_steps(tmp_path, monkeypatch):
    """The hook's deferred loss goes through engine.backward on every rank and is all-reduced like any
    gradient: two ZeRO-1 ranks end a student epoch with the same LoRA weights as one process (SGD, so
    the weights move by the gradients themselves, surgery included)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from genguard.data.images import ManifestImages, Preprocess
    from genguard.training.deepspeed_backend import fit_distributed

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    torch.manual_seed(0)
    # align_batch_size fixes the 1/B of the beneficial direction, so a rank's 8 rows weigh as the 16 of one
    # process; dropout off so every process draws the same (no) masks
    model = build_detector("dgs_net", backbone={"name": "genguard-tiny-vit-32"}, lora_dropout=0.0,
                           align_batch_size=16, patch_selection={"patch_size": 8, "grid": 4})
    rng = np.random.default_rng(0)
    paths = []
    for i in range(32):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256 if i % 2 else 64, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    frame = pd.DataFrame({"path": paths, "label": [i % 2 for i in range(32)]})
    preprocess = Preprocess(image_size=32, patch_selection={"patch_size": 8, "grid": 4})
    text = torch.randn(32, model.backbone.embed_dim)
    # train=False: each image's patch order is fixed, so every process sees the same pixels
    rows = ManifestImages(frame, preprocess, train=False, extras={"text_features": text})
    with torch.no_grad():  # a teacher probe that is not zero, as after stage 1
        model.teacher_head.weight.normal_(0, 0.5)
    model.begin_stage("student", rows)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    common = dict(epochs=1, batch_size=16, lr=0.5, optimizer="sgd", select_best=False)
    fit(model, rows, None, TrainConfig(**common), show_progress=False)
    local = [p.detach().clone() for p in model.lora_parameters]
    assert model.last_feature_gradient is not None  # the surgery ran

    model.load_state_dict(init)
    cfg = TrainConfig(**common, backend="deepspeed",
                      deepspeed={"num_gpus": 2, "config": {"zero_optimization": {"stage": 1}}})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    fit_distributed(model, rows, None, cfg, checkpoint_dir=tmp_path / "ckpt", stage="student")
    lora_keys = [k for k in init if "lora" in k]
    assert max(float((model_state := dict(zip(lora_keys, local, strict=True)))[k].sub(init[k]).abs().max())
               for k in lora_keys) > 1e-3  # the epoch really changed the adapters
    assert set(model_state) == set(lora_keys)
    for mine, theirs in zip(local, model.lora_parameters, strict=True):
        assert torch.allclose(theirs.detach(), mine, atol=1e-5)
    summary = json.loads((tmp_path / "ckpt" / "deepspeed_job" / "summary.json").read_text())
    assert summary["zero_stage"] == 1 and summary["ranks_in_sync"] is True
