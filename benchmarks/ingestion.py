"""Checking a ForenSynths-layout image folder: first pass on 1 and 2 workers, second pass from the cache.

    .venv/bin/python benchmarks/ingestion.py [--images 20000] [--out DIR] [--seed 0] [--workers 2]

The folder ``<out>/forensynths_<n>_seed<seed>/<generator>/{0_real,1_fake}/*.{png,jpg}`` is generated
once (64-256 px per side, 60% PNG / 40% JPEG, 1 in 500 damaged, deterministic from the seed) and
reused by later runs. Each pass runs ``--repeat`` times (median reported), all with the OS page cache
warm (the same for every pass, so the ratios compare checking work):

    baseline      the pre-cache code path: a 4-thread pool over ``check_image_file``, no cache
    first_1w      ``check_files(workers=1, cache=None)``
    first_2w      ``check_files(workers=2)`` on a fresh cache file (includes writing the cache)
    second_2w     the same call again: every file is served from the cache (5 times per repetition)

Targets (issue): second_pass_speedup = first_2w / second_2w >= 20;
parallel_speedup = first_1w / first_2w >= 1.6. Results go to stdout and ``<out>/ingestion.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "ingestion"
GENERATORS = ("progan", "stylegan", "biggan", "cyclegan")
CLASSES = ("0_real", "1_fake")
TEXTURE = 512  # side of the shared noise texture images are cut from


def _texture(seed: int) -> np.ndarray:
    """Smooth gradients plus mild noise: compresses like photos do, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:TEXTURE, 0:TEXTURE].astype(np.float32) / TEXTURE
    base = np.stack([x * 200, y * 200, (x + y) * 100], axis=-1)
    noise = rng.normal(0, 12, size=(TEXTURE, TEXTURE, 3)).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _image_plan(n: int, seed: int) -> list[tuple[str, int, int, int, int, int, int]]:
    """(relative path, width, height, x0, y0, colour shift, JPEG quality or 0 for PNG) per image.

    One file in 500 is damaged afterwards (``_damage``), so bad verdicts are part of the measurement.
    """
    rng = np.random.default_rng(seed + 1)
    sides = rng.integers(64, 257, size=(n, 2))
    offsets = rng.integers(0, TEXTURE - 256, size=(n, 2))
    shifts = rng.integers(0, 256, size=n)
    jpeg = rng.random(n) < 0.4
    quality = rng.integers(70, 96, size=n)
    plan = []
    for i in range(n):
        folder = f"{GENERATORS[i % len(GENERATORS)]}/{CLASSES[(i // len(GENERATORS)) % 2]}"
        suffix = ".jpg" if jpeg[i] else ".png"
        plan.append((f"{folder}/{i:06d}{suffix}", int(sides[i, 0]), int(sides[i, 1]), int(offsets[i, 0]),
                     int(offsets[i, 1]), int(shifts[i]), int(quality[i]) if jpeg[i] else 0))
    return plan


def _write_images(root: str, seed: int, items: list[tuple]) -> int:
    from PIL import Image

    texture = _texture(seed)
    for rel, width, height, x0, y0, shift, quality in items:
        pixels = texture[y0:y0 + height, x0:x0 + width] + np.uint8(shift)  # uint8 wraps: distinct colours
        path = Path(root) / rel
        if quality:
            Image.fromarray(pixels).save(path, quality=quality)
        else:
            Image.fromarray(pixels).save(path, compress_level=6)
        index = int(Path(rel).stem)
        if index % 500 == 499:
            _damage(path, index)
    return len(items)


def _damage(path: Path, index: int) -> None:
    """Truncate to half, or (every other time) replace by text: what broken downloads look like."""
    if index % 1000 == 499:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")


def build_dataset(out: Path, n: int, seed: int, workers: int) -> Path:
    """Generate the folder unless a complete one (marker file) is already there."""
    root = out / f"forensynths_{n}_seed{seed}"
    marker = root / ".complete.json"
    if marker.exists():
        return root
    started = time.perf_counter()
    for generator in GENERATORS:
        for cls in CLASSES:
            (root / generator / cls).mkdir(parents=True, exist_ok=True)
    plan = _image_plan(n, seed)
    chunks = [plan[i:i + 500] for i in range(0, n, 500)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        written = sum(pool.map(_write_images, [str(root)] * len(chunks), [seed] * len(chunks), chunks))
    marker.write_text(json.dumps({"images": written, "seed": seed}) + "\n")
    print(f"generated {written} images in {time.perf_counter() - started:.1f} s under {root}", flush=True)
    # Files younger than the racy window are checked but not cached (genguard.data.files); wait it
    # out so that the second pass measures what a rerun on an untouched folder costs.
    from genguard.data.files import RACY_WINDOW_NS

    time.sleep(RACY_WINDOW_NS / 1e9)
    return root


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel passes")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the 4-thread, no-cache pass")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # timing, not bars

    from genguard.data.files import ImageCheck, check_files, check_image_file, strict_image_loading

    root = build_dataset(args.out, args.images, args.seed, args.workers)
    paths = list_images(root)
    checker = ImageCheck()
    cache = args.out / f"file_checks_{args.images}_seed{args.seed}.sqlite"
    cache.unlink(missing_ok=True)

    runs: dict[str, list[float]] = {}
    results: dict[str, list] = {}

    def measure(name: str, fn) -> None:
        started = time.perf_counter()
        results.setdefault(name, []).append(fn())
        runs.setdefault(name, []).append(time.perf_counter() - started)

    def threads() -> list:
        with strict_image_loading(), ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(check_image_file, paths))

    for _ in range(args.repeat):  # interleaved, so drifting load on a shared machine hits all passes
        if not args.skip_baseline:
            measure("baseline", threads)
        measure("first_1w", lambda: check_files(paths, checker, workers=1))
        cache.unlink(missing_ok=True)
        measure("first_2w", lambda: check_files(paths, checker, cache=cache, workers=args.workers))
        for _ in range(5):  # ~0.1 s each, so one hiccup of a shared machine would dominate a single run
            measure("second_2w", lambda: check_files(paths, checker, cache=cache, workers=args.workers))
    timings = {name: statistics.median(seconds) for name, seconds in runs.items()}
    same = all(r == results["first_1w"][0] for rs in results.values() for r in rs)
    n = len(paths)
    report = {
        "images": n, "cpus": os.cpu_count(), "workers": args.workers,
        "repeat": args.repeat, "seconds": {k: round(v, 3) for k, v in timings.items()},
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "images_per_s": {k: round(n / v, 1) for k, v in timings.items()},
        "second_pass_speedup": round(timings["first_2w"] / timings["second_2w"], 1),
        "second_pass_speedup_vs_1w": round(timings["first_1w"] / timings["second_2w"], 1),
        "parallel_speedup": round(timings["first_1w"] / timings["first_2w"], 2),
        "cache_mib": round(cache.stat().st_size / 2**20, 2),
        "bad_files": sum(type(r).__name__ == "BadFile" for r in results["first_1w"][0]),
        "same_results": same,
    }
    print(f"\n{'pass':<11}{'seconds':>9}{'images/s':>11}   (median of {args.repeat})")
    for name, seconds in timings.items():
        print(f"{name:<11}{seconds:>9.2f}{n / seconds:>11.0f}")
    print(f"second pass speedup {report['second_pass_speedup']}x (target >= 20), "
          f"parallel speedup {report['parallel_speedup']}x (target >= 1.6), results identical: {same}")
    print(json.dumps(report, sort_keys=True))
    (args.out / "ingestion.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(0 if report["same_results"] else 1)
