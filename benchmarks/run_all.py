"""Speed and memory measurements (not tests): printed, saved under benchmarks/results/, logged to MLflow.

    python benchmarks/run_all.py                 # all
    python benchmarks/run_all.py cache inference # some

cache      UnivFD training for 10 epochs on cached features vs recomputing the frozen backbone every
           epoch (target: >= 5x faster).
inference  images/s of a trained PiN-CLIP detector (LoRA merged) vs the bare backbone forward on the
           same batch (target: within 15%).
run        wall time and peak RSS of `kedro run --pipeline=pin_clip` (target: < 3 min after install).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _embedded_manifest():
    import yaml

    from genguard.data.default_aigi import build_default_aigi_dataset

    data = yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text())["data"]
    embedded = data["embedded"]
    manifest = build_default_aigi_dataset(ROOT / embedded["out_dir"], embedded["config"],
                                          photo_root=ROOT / embedded["photo_root"], progress=False)
    return manifest, data


def bench_cache(epochs: int = 10) -> dict:
    """Same model, same data, same epochs: features cached once vs backbone forward every epoch."""
    from genguard.data.splits import protocol_splits
    from genguard.data.transforms import FeatureRows, ManifestImages, Preprocess
    from genguard.methods import build_detector
    from genguard.training.engine import TrainConfig, fit, make_loader

    os.chdir(ROOT)
    manifest, data = _embedded_manifest()
    train = protocol_splits(manifest, data["embedded"]["train_generators"])["train"]
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, hflip=False, select_best=False)

    model = build_detector("univfd", backbone={"name": "genguard-tiny-vit"})
    pre = Preprocess(model.backbone.image_size, model.backbone.image_mean, model.backbone.image_std)
    images = ManifestImages(train, pre)
    started = time.perf_counter()
    fit(model, images, None, cfg)
    recompute_s = time.perf_counter() - started

    model = build_detector("univfd", backbone={"name": "genguard-tiny-vit"})
    started = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([model.encode(b["image"]) for b in make_loader(images, 128, shuffle=False)])
    fit(model, FeatureRows(feats, images.labels), None, cfg)
    cached_s = time.perf_counter() - started  # includes the one-off encoding pass
    return {"epochs": epochs, "train_images": len(train), "recompute_s": recompute_s, "cached_s": cached_s,
            "speedup": recompute_s / cached_s}


def bench_inference(batch: int = 256, repeats: int = 5) -> dict:
    """Trained detector (as loaded for inference) vs the bare backbone on one batch."""
    from genguard.io.model_store import load_detector
    from genguard.models.backbones import create_backbone

    model_dir = ROOT / "data/06_models/pin_clip"
    if not (model_dir / "config.json").is_file():
        raise SystemExit("run `kedro run --pipeline=pin_clip` first (needs data/06_models/pin_clip)")
    detector = load_detector(model_dir).model.eval()
    backbone = create_backbone(detector.init_spec["backbone"]).eval()
    x = torch.randn(batch, 3, backbone.image_size, backbone.image_size)

    def best_of(fn) -> float:
        with torch.inference_mode():
            fn(x)  # warm-up
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - started)
        return min(times)

    backbone_s, detector_s = best_of(backbone.encode_image), best_of(detector)
    return {"batch": batch, "backbone_images_per_s": batch / backbone_s,
            "detector_images_per_s": batch / detector_s, "detector_over_backbone_time": detector_s / backbone_s}


def bench_run() -> dict:
    """Wall time and peak RSS of a real `kedro run --pipeline=pin_clip` (dataset already built)."""
    kedro = Path(sys.executable).parent / "kedro"
    started = time.perf_counter()
    subprocess.run([str(kedro), "run", "--pipeline=pin_clip"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": wall, "peak_rss_mb": peak_kb / 1024}


BENCHES = {"cache": bench_cache, "inference": bench_inference, "run": bench_run}


def main(names: list[str]) -> None:
    import mlflow

    results = {}
    for name in names or list(BENCHES):
        print(f"== {name}", flush=True)
        results[name] = BENCHES[name]()
        print(json.dumps(results[name], indent=2), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"))
    from genguard.tracking.mlflow_tracking import default_artifact_root, ensure_experiment

    experiment = ensure_experiment("genguard-benchmarks", default_artifact_root(ROOT))
    with mlflow.start_run(experiment_id=experiment, run_name="+".join(results)):
        mlflow.log_metrics({f"{bench}/{k}": float(v) for bench, r in results.items() for k, v in r.items()})
        mlflow.set_tag("cpu_count", os.cpu_count())


if __name__ == "__main__":
    main(sys.argv[1:])
