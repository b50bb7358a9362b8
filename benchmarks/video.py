"""Video MoE (TLGA / J-TLAT) speed measurements (imported by run_all.py; runnable alone):

    .venv/bin/python benchmarks/video.py [attack_cost] [train_epoch]
    .venv/bin/python benchmarks/run_all.py video_grid     # grid: timed by run_all's kedro-run helper

attack_cost  every attack of the base config (conf/base/parameters_tlga.yml) at the first budget of
             ``tlga.attack.eps``: per clip FLOPs (forward + backward, torch's flop formulas), model-forward
             equivalents, gradient steps, and wall time per clip (min / median / max over repeats on a batch
             of 64 embedded motion clips); plus the MoE's inference cost against the dense model of equal
             width. On the trained J-TLAT model when one is cached (data/06_models/tlga/j_tlat), else on
             the config's randomly initialised VideoMoE (``trained_model`` says which: weights barely move
             the cost, but top-1 dispatch does, as a trained router spreads clips over the experts
             differently).
train_epoch  seconds per training epoch (1024 clips, batch 64, plain Adam over ``model.training_loss``) of
             standard training, PGD-AT and J-TLAT on the embedded config; the ratios J-TLAT / standard and
             J-TLAT / PGD-AT are the headline figures (they size ``pgd_at_matched``'s extra epochs).
grid         wall time and peak RSS of a fresh ``kedro run --pipelines=tlga`` with every cache (clips, decoded
             tensors, models, checkpoints, reports, MLflow) redirected into a temporary folder, so it renders
             and trains from scratch (target: <= 15 min on 2 cores). The catalog's tlga files (manifests
             under data/02_intermediate and data/03_primary, reports under data/08_reporting) have fixed
             paths; they are backed up before the run and put back after it, so the project's data is left
             as it was.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "data/06_models/tlga/j_tlat"
BATCH = 64
EPOCH_CLIPS = 1024


def _tlga() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "conf/base/parameters_tlga.yml").read_text())["tlga"]


def _motion_clips(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` embedded motion clips of the config's world: uint8 (N, 3, T, H, W) and labels."""
    from genguard.families.video.motion import render_motion_clips, world_from_params

    frames, metadata = render_motion_clips(world_from_params(_tlga()["data"].get("world") or {}), n, seed)
    clips = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).contiguous()  # (N, T, H, W, 3) -> (N, 3, T, H, W)
    return clips, torch.tensor([m["label"] for m in metadata])


def _classes() -> int:
    from genguard.families.video.motion import world_from_params

    return world_from_params(_tlga()["data"].get("world") or {}).n_classes


def _model() -> tuple[Any, bool]:
    """(the model attacks are costed on, whether it is the cached trained J-TLAT model)."""
    from genguard.families.video import VideoMoE
    from genguard.io.model_files import load_model_dir

    if (TRAINED / "config.json").is_file():
        return load_model_dir(TRAINED).model.eval(), True
    torch.manual_seed(0)
    return VideoMoE(**_tlga()["model"], classes=_classes()).eval(), False


def _spread(function: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """(min, median, max) seconds of ``repeats`` calls; the caller has warmed ``function`` up."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times), max(times)


def bench_attack_cost(repeats: int = 3) -> dict[str, float]:
    from genguard.families.video.robustness import attack_cost, inference_cost
    from genguard.pipelines.video.nodes import named_attacks

    tlga = _tlga()
    budgets = tlga["attack"]["eps"]
    eps = float(budgets[0] if isinstance(budgets, list) else budgets)
    attacks = named_attacks({**tlga, "attack": {**tlga["attack"], "eps": eps}})  # one budget: plain names
    model, trained = _model()
    source = f"the trained J-TLAT model {TRAINED}" if trained else "a random-init VideoMoE (none cached)"
    print(f"video attack_cost on {source}", flush=True)
    uint8, labels = _motion_clips(BATCH, seed=1)
    clips = uint8.float() / 255
    out: dict[str, float] = {"trained_model": float(trained), "eps_x255": eps * 255, "batch": BATCH,
                             "repeats": repeats}
    for name, attack in attacks.items():
        cost = attack_cost(model, attack, clips, labels)  # its own timed call doubles as the warm-up
        fastest, median, slowest = _spread(lambda attack=attack: attack(model, clips, labels), repeats)
        out.update({f"{name}/gflops_per_clip": cost["gflops_per_clip"],
                    f"{name}/forward_equivalents": cost["model_forward_equivalents"],
                    f"{name}/gradient_steps": cost["gradient_steps"],
                    f"{name}/ms_per_clip_min": 1e3 * fastest / BATCH,
                    f"{name}/ms_per_clip_median": 1e3 * median / BATCH,
                    f"{name}/ms_per_clip_max": 1e3 * slowest / BATCH})
    inference = inference_cost(model, tuple(clips.shape[1:]), batch_size=BATCH, repeats=5)
    out.update({f"inference/{k}": v for k, v in inference.items()})
    return out


def _batches(n: int, epoch: int) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
    yield from order.split(BATCH)


def bench_train_epoch(epochs: int = 3) -> dict[str, float]:
    """A warm-up epoch, then ``epochs`` timed epochs; the regimes take turns epoch by epoch, so drift in the
    machine's speed hits all of them alike."""
    from genguard.families.video import VideoMoE

    tlga = _tlga()
    uint8, labels = _motion_clips(EPOCH_CLIPS, seed=0)
    runners = {}
    for name in ("standard", "pgd_at", "j_tlat"):
        torch.manual_seed(0)
        regime = {k: v for k, v in dict(tlga["regimes"][name]).items() if k != "train"}
        model = VideoMoE(**tlga["model"], classes=_classes(), regime=regime).train()
        runners[name] = (model, torch.optim.Adam(model.parameters(), lr=float(tlga["train"]["lr"])))

    def one_epoch(model: VideoMoE, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        started = time.perf_counter()
        for rows in _batches(EPOCH_CLIPS, epoch):
            batch = {"clips": uint8[rows].float() / 255, "label": labels[rows]}  # as ClipSet hands them over
            optimizer.zero_grad(set_to_none=True)
            loss, _ = model.training_loss(batch)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {name: [] for name in runners}
    for epoch in range(epochs + 1):  # epoch 0 warms up
        for name, (model, optimizer) in runners.items():
            seconds = one_epoch(model, optimizer, epoch)
            if epoch:
                times[name].append(seconds)
    out: dict[str, float] = {"clips_per_epoch": EPOCH_CLIPS, "batch": BATCH, "timed_epochs": epochs}
    for name, values in times.items():
        out.update({f"{name}/epoch_s_min": min(values), f"{name}/epoch_s_median": statistics.median(values),
                    f"{name}/epoch_s_max": max(values)})
    median = {name: statistics.median(values) for name, values in times.items()}
    out["j_tlat_over_standard"] = median["j_tlat"] / median["standard"]
    out["j_tlat_over_pgd_at"] = median["j_tlat"] / median["pgd_at"]
    out["pgd_at_over_standard"] = median["pgd_at"] / median["standard"]
    return out


def _catalog_files(prefix: str = "tlga_") -> list[Path]:
    """The file paths of the catalog's ``tlga_*`` datasets (fixed in conf/base/catalog.yml)."""
    catalog = yaml.safe_load((ROOT / "conf/base/catalog.yml").read_text())
    return [ROOT / entry["filepath"] for name, entry in catalog.items()
            if name.startswith(prefix) and isinstance(entry, dict) and "filepath" in entry]


@contextmanager
def _restored(paths: list[Path], backup: Path) -> Iterator[None]:
    """Put ``paths`` (files or folders) back as they were on exit; ones that did not exist are removed."""
    saved: dict[Path, Path | None] = {}
    for index, path in enumerate(paths):
        copy = backup / str(index)
        if path.is_dir():
            shutil.copytree(path, copy)
        elif path.is_file():
            shutil.copy2(path, copy)
        saved[path] = copy if path.exists() else None
    try:
        yield
    finally:
        for path, copy in saved.items():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            if copy is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if copy.is_dir() else shutil.copy2)(copy, path)


def bench_grid(kedro_run: Callable[..., dict[str, float]]) -> dict[str, float]:
    """``kedro run --pipelines=tlga`` from scratch, measured by ``kedro_run`` (run_all's helper, handed in so
    this module never imports run_all: run it as ``run_all.py video_grid``)."""
    with tempfile.TemporaryDirectory(prefix="genguard-tlga-bench-") as tmp:
        overrides = {"data.out_dir": "motion", "data.cache_dir": "clips", "model_dir": "models",
                     "checkpoint_dir": "ckpt", "reports_dir": "reports"}
        params = ",".join(f"tlga.{key}={tmp}/{folder}" for key, folder in overrides.items())
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
               "MLFLOW_ARTIFACT_ROOT": f"{tmp}/artifacts"}  # conf/base/mlflow.yml reads both
        (Path(tmp) / "backup").mkdir()
        training_report = ROOT / "data/08_reporting/tlga/training.json"
        with _restored(_catalog_files(), Path(tmp) / "backup"):
            try:
                out = kedro_run("tlga", f"--params={params}", env=env)
            except subprocess.CalledProcessError as error:
                raise SystemExit(f"the tlga run failed (output discarded); rerun it by hand to see why:\n"
                                 f"  {' '.join(error.cmd)}") from None
            training = json.loads(training_report.read_text())  # this run's, before the backup goes back
    # Per stage of training as the run reported it; cached = 1 would mean the redirect missed a cache.
    for name, record in training.items():
        out[f"{name}/train_s"] = float(record.get("seconds", float("nan")))
        out[f"{name}/cached"] = float(bool(record.get("cached")))
    out["target_s"] = 15 * 60.0
    return out


BENCHES = {"attack_cost": bench_attack_cost, "train_epoch": bench_train_epoch}  # grid: via run_all.py

if __name__ == "__main__":
    torch.set_num_threads(2)
    for name in sys.argv[1:] or list(BENCHES):
        print(f"== {name}", flush=True)
        print(json.dumps(BENCHES[name](), indent=2), flush=True)
