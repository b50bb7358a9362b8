"""Speed and memory measurements (not tests): printed, saved under benchmarks/results/, logged to MLflow.

    python benchmarks/run_all.py                 # all
    python benchmarks/run_all.py cache inference # some

cache      UnivFD training for 10 epochs on cached features vs recomputing the frozen backbone every
           epoch (target: >= 5x faster).
inference  images/s of a trained PiN-CLIP detector (LoRA merged) vs the bare backbone forward on the
           same batch (target: within 15%).
run        wall time and peak RSS of `kedro run --pipelines=pin_clip` (target: < 3 min after install).
dgs_step   per-step cost of a DGS-Net student step (teacher forward + caption head + gradient surgery)
           vs plain LoRA fine-tuning on the same batch (target: surgery well under 2x); tiny 32-px ViT and
           a random-init ViT-B/16 at 224 px (the paper's token count regime), surgery on and off.
shared     frozen-feature store: two frozen detectors with one backbone + input (UnivFD and NS-Net's
           frozen-encoder option) encoded once vs once per detector, degraded test sets included.
benchmark  wall time and peak RSS of `kedro run --pipelines=aigi_benchmark` (target: < 15 min on 2 cores).
prior      the embedded default's LiT prior (EfficientNet-Lite0 + MiniLM): build vs cached check, load time,
           encoder images/s and one PiN-CLIP LoRA step on it vs on the random-init tiny ViT it replaced.
face_preprocess  face crops of an FF++-layout folder of real H.264 talking-face videos: crops/s of the first
           run (decode, detect, align, crop) vs the cached rerun (target: the rerun decodes nothing);
           benchmarks/face.py.
face_step  one training step of Effort, SeLop, MASM vs the bare backbone's forward+backward (tiny 64-px ViT and
           random-init ViT-B/16 at 224 px); benchmarks/face.py.
face_benchmark  wall time and peak RSS of `kedro run --pipelines=deepfake_benchmark` (target: <= 15 min on 2 cores).
t2i_sampler  images/s of the text-to-image testbed sampler vs the bare UNet forward; benchmarks/t2i.py.
t2i_set_cost  SET's probe per prompt vs one plain generation; benchmarks/t2i.py.
t2i_stages  wall times of the T2I embedded default's stages (testbed training, TICoE/ESD/UCE, injection, SET).
video_attack_cost  every TLGA attack at the first budget: FLOPs, forward equivalents, steps, ms per clip;
           MoE vs dense inference cost; benchmarks/video.py.
video_train_epoch  seconds per epoch of standard training vs PGD-AT vs J-TLAT (embedded config);
           benchmarks/video.py.
video_grid  wall time and peak RSS of a fresh `kedro run --pipelines=tlga`, every cache in a temporary folder
           (target: <= 15 min on 2 cores); benchmarks/video.py.
reveal_evidence  REVEAL-Bench construction images/s, first build vs rebuild from the expert cache;
           benchmarks/reveal.py.
reveal_steps  SFT and GRPO steps/s of the tiny policy on 2 cores; benchmarks/reveal.py.
reveal_generation  new tokens/s of the trained GRPO policy vs the bare policy, same forced length;
           benchmarks/reveal.py.
reveal_run  wall time and peak RSS of `kedro run --pipelines=reveal` (bench cached, models retrained: the
           model folders are redirected to a temporary folder).
ingestion  checking a generated 20k-image ForenSynths folder: first pass on 1 and 2 processes, second pass
           from the file-check cache (targets: second >= 20x faster, 2 processes >= 1.6x faster); the
           standalone script is benchmarks/ingestion.py.
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
    """The embedded default AIGI dataset as the pipelines see it (built once, cached)."""
    import yaml

    from genguard.data.sources import resolve_source

    os.chdir(ROOT)
    data = yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text())["data"]
    return resolve_source("aigi", data).ingest(data).manifest, data


def bench_cache(epochs: int = 10) -> dict:
    """Same model, same data, same epochs: features cached once vs backbone forward every epoch."""
    from genguard.data.datasets import FeatureRows
    from genguard.data.images import ManifestImages, Preprocess
    from genguard.data.loaders import make_loader
    from genguard.families.aigi import build_detector
    from genguard.pipelines.aigi.nodes import protocol_frames
    from genguard.training import TrainConfig, fit

    manifest, data = _embedded_manifest()
    train = protocol_frames(manifest, data)["train"]
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, select_best=False)

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
    from genguard.families.aigi.inference import load_detector
    from genguard.models.backbones import create_backbone

    model_dir = ROOT / "data/06_models/pin_clip"
    if not (model_dir / "config.json").is_file():
        raise SystemExit("run `kedro run --pipelines=pin_clip` first (needs data/06_models/pin_clip)")
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


def _kedro_run(pipeline: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """Wall time and peak RSS of a real `kedro run --pipelines=<pipeline> [args]` (dataset already built);
    ``env`` adds to this process's environment."""
    kedro = Path(sys.executable).parent / "kedro"
    started = time.perf_counter()
    subprocess.run([str(kedro), "run", f"--pipelines={pipeline}", *args], cwd=ROOT, check=True,
                   env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children so far
    return {"wall_s": wall, "peak_rss_mb": peak_kb / 1024}


def bench_run() -> dict:
    return _kedro_run("pin_clip")


def _step(model, optimizer, hook, batch, plain: bool) -> float:
    """Seconds of one optimizer step: forward, backward(s), gradient hook, step."""
    import torch.nn.functional as F

    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    if plain:  # plain LoRA fine-tuning: BCE of the image head on the student, one backward
        logits = model.image_head(model.encode(batch["image"])).squeeze(-1)
        F.binary_cross_entropy_with_logits(logits, batch["label"].float()).backward()
    else:  # the surgery is a tensor hook inside the one backward
        loss, _ = model.training_loss(batch)
        loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def bench_dgs_step(steps: int = 6) -> dict:
    """Variants step in turn (A B C A B C ...) so machine drift hits all alike; medians reported."""
    import statistics

    from genguard.families.aigi import build_detector

    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    for label, backbone, size, batch_size, select in (
            ("tiny32", {"name": "genguard-tiny-vit-32"}, 32, 32, {"patch_size": 8, "grid": 4}),
            ("vitb16_224", {"name": "ViT-B-16"}, 224, 8, {"patch_size": 32, "grid": 7})):
        g = torch.Generator().manual_seed(0)
        batch = {"image": torch.randn(batch_size, 3, size, size, generator=g),
                 "label": torch.arange(batch_size) % 2}
        runners = {}
        for variant, options in (("plain", {}), ("dgs", {"surgery": True}), ("dgs_no_surgery", {"surgery": False})):
            torch.manual_seed(0)
            model = build_detector("dgs_net", backbone=backbone, patch_selection=select, **options)
            model.begin_stage("student", None)
            model.train()
            optimizer = torch.optim.AdamW(model.parameter_groups(1e-4, 0.0)[0]["params"], lr=1e-4)
            runners[variant] = (model, optimizer, model.gradient_hook())
        batch["text_features"] = torch.randn(batch_size, runners["dgs"][0].backbone.embed_dim, generator=g)
        times: dict[str, list[float]] = {variant: [] for variant in runners}
        for i in range(steps + 1):  # the first round warms up
            for variant, (model, optimizer, hook) in runners.items():
                seconds = _step(model, optimizer, hook, batch, plain=variant == "plain")
                if i:
                    times[variant].append(seconds)
        timings = {variant: statistics.median(values) for variant, values in times.items()}
        results.update({f"{label}/{k}_step_s": v for k, v in timings.items()})
        results[f"{label}/dgs_over_plain"] = timings["dgs"] / timings["plain"]
        results[f"{label}/surgery_over_no_surgery"] = timings["dgs"] / timings["dgs_no_surgery"]
        results[f"{label}/batch"] = batch_size
    return results


def bench_shared() -> dict:
    from genguard.pipelines.aigi.benchmark import encode_shared_features

    manifest, data = _embedded_manifest()
    benchmark = {"conditions": "aigi_robustness"}
    backbone = {"name": "genguard-tiny-vit", "pretrained": None}
    univfd = {"method": "univfd", "backbone": backbone, "options": {}}
    frozen_ns = {"method": "ns_net", "backbone": backbone,
                 "options": {"lora_rank": 0, "patch_selection": None, "normalisation": "backbone"}}
    started = time.perf_counter()
    shared = encode_shared_features(manifest, data, benchmark, {"model": univfd}, {"model": frozen_ns})
    shared_s = time.perf_counter() - started
    started = time.perf_counter()
    for model in ({"model": univfd}, {"model": frozen_ns}):
        encode_shared_features(manifest, data, benchmark, {"model": model})
    separate_s = time.perf_counter() - started
    return {"shared_s": shared_s, "per_detector_s": separate_s, "saved_s": separate_s - shared_s,
            "images_encoded": shared["report"]["feature_keys"][0]["images_encoded"],
            "images_saved": shared["report"]["encoder_images_saved_by_sharing"]}


def bench_benchmark() -> dict:
    return _kedro_run("aigi_benchmark")


def bench_prior(repeats: int = 3) -> dict:
    """The embedded default's pretrained prior: build (first) vs cached check, encoder images/s and one
    LoRA training step of PiN-CLIP on it vs on the random-init tiny ViT it replaced."""
    import tempfile

    import yaml

    from genguard.models.backbones import create_backbone
    from genguard.pipelines.aigi.prior import ensure_backbone_prior

    torch.set_num_threads(os.cpu_count() or 1)
    manifest, _ = _embedded_manifest()
    params = yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text())["backbone_prior"]
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="genguard-prior-") as tmp:
        spec = {"name": "genguard-lit-effnet-lite0", "pretrained": f"{tmp}/prior.safetensors"}
        started = time.perf_counter()
        report = ensure_backbone_prior(manifest, spec, params)
        out["build_s"] = time.perf_counter() - started
        started = time.perf_counter()
        ensure_backbone_prior(manifest, spec, params)
        out["cached_check_s"] = time.perf_counter() - started
        out.update({k: report[k] for k in ("images", "distinct_captions", "retrieval_train", "retrieval_held_out",
                                           "retrieval_chance", "encode_seconds", "align_seconds")})
        started = time.perf_counter()
        create_backbone(spec)
        out["load_s"] = time.perf_counter() - started
        for label, backbone in {"lit96": spec, "tiny_vit64": {"name": "genguard-tiny-vit"}}.items():
            out.update({f"{label}/{k}": v for k, v in _encoder_and_step(backbone, repeats).items()})
    out["lit_over_tiny_step"] = out["lit96/pin_clip_step_s"] / out["tiny_vit64/pin_clip_step_s"]
    return out


def _encoder_and_step(backbone: dict, repeats: int) -> dict:
    """Encoder images/s on a 256-image batch and one PiN-CLIP LoRA step (batch 32, conf/base options),
    best of ``repeats``."""
    import yaml

    from genguard.families.aigi import build_detector
    from genguard.models.backbones import create_backbone

    encoder = create_backbone(backbone).eval()
    x = torch.randn(256, 3, encoder.image_size, encoder.image_size)
    with torch.inference_mode():
        encoder.encode_image(x)
        encode_s = min(_timed(lambda: encoder.encode_image(x)) for _ in range(repeats))
    torch.manual_seed(0)
    options = yaml.safe_load((ROOT / "conf/base/parameters_pin_clip.yml").read_text())["pin_clip"]["model"]["options"]
    model = build_detector("pin_clip", backbone=backbone, **options).train()
    batch = {"image": x[:32], "label": torch.arange(32) % 2}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.training_loss(batch)[0].backward()
        optimizer.step()

    step()
    return {"encode_images_per_s": 256 / encode_s, "pin_clip_step_s": min(_timed(step) for _ in range(repeats))}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _face(name: str) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import face

    return face.BENCHES[name]()


def _t2i(name: str) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import t2i

    return t2i.BENCHES[name]()


def _video(name: str) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import video

    return video.bench_grid(_kedro_run) if name == "grid" else video.BENCHES[name]()


def _reveal(name: str) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import reveal

    return reveal.BENCHES[name]()


def bench_reveal_run() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="genguard-reveal-run-") as tmp:
        return _kedro_run("reveal", f"--params=reveal.model_dir={tmp}/models,reveal.work_dir={tmp}/work")


def bench_face_benchmark() -> dict:
    return _kedro_run("deepfake_benchmark")


def bench_ingestion() -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ingestion

    return ingestion.main([])


BENCHES = {"cache": bench_cache, "inference": bench_inference, "run": bench_run, "dgs_step": bench_dgs_step,
           "shared": bench_shared, "benchmark": bench_benchmark, "prior": bench_prior, "ingestion": bench_ingestion,
           "face_preprocess": lambda: _face("preprocess"), "face_step": lambda: _face("step"),
           "face_benchmark": bench_face_benchmark, "t2i_sampler": lambda: _t2i("sampler"),
           "t2i_set_cost": lambda: _t2i("set_cost"), "t2i_stages": lambda: _t2i("stages"),
           "video_attack_cost": lambda: _video("attack_cost"),
           "video_train_epoch": lambda: _video("train_epoch"), "video_grid": lambda: _video("grid"),
           "reveal_evidence": lambda: _reveal("evidence"), "reveal_steps": lambda: _reveal("steps"),
           "reveal_generation": lambda: _reveal("generation"), "reveal_run": bench_reveal_run}


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
