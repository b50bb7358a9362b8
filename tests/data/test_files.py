"""Checking many files: same verdicts as the direct checker, served from the SQLite cache when unchanged."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from genguard.data import files
from genguard.data.files import (
    CheckCache,
    ImageCheck,
    ImageInfo,
    check_files,
    check_image_file,
    decode_result,
    encode_result,
)
from genguard.data.manifest import BadFile

_counter = itertools.count()
HOUR_NS = 3600 * 10**9


def _image(path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    """A small noise image in the format of the suffix (distinct bytes per call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(next(_counter))
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).save(path)
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return path


def _age(*paths: Path, ago_ns: int = HOUR_NS) -> None:
    """Backdate files past the racy window, as files of a dataset that is not being written are."""
    when = time.time_ns() - ago_ns
    for path in paths:
        os.utime(path, ns=(when, when))


def _folder(root: Path) -> list[Path]:
    """Good PNG/JPEG files and one of each kind of bad file, all older than the racy window."""
    empty = root / "empty.png"
    text = root / "notes_saved_as.png"
    root.mkdir(parents=True)
    empty.write_bytes(b"")
    text.write_text("this is not a picture")
    paths = [
        _image(root / "good.png"),
        _image(root / "good.jpg", size=(48, 64)),
        _truncate(_image(root / "truncated.png", size=(64, 64))),
        _truncate(_image(root / "truncated.jpg", size=(64, 64))),
        empty,
        text,
        _image(root / "small.png", size=(20, 40)),
    ]
    _age(*paths)
    return paths


class _Recorder:
    """Stands in for ``check_image_file`` in this process and records which paths were decoded."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path, **kw):
        self.calls.append(Path(path).name)
        return check_image_file(path, **kw)


@pytest.fixture
def recorder(monkeypatch) -> _Recorder:
    recorder = _Recorder()
    monkeypatch.setattr(files, "check_image_file", recorder)
    return recorder


def test_results_match_the_direct_checker_in_order(tmp_path):
    paths = _folder(tmp_path / "data")
    mixed = [str(p) if i % 2 else p for i, p in enumerate(paths)]  # str and Path inputs
    expected = [check_image_file(p) for p in paths]

    uncached = check_files(mixed, ImageCheck(), workers=1)
    first = check_files(mixed, ImageCheck(), cache=tmp_path / "checks.sqlite", workers=1)
    second = check_files(mixed, ImageCheck(), cache=tmp_path / "checks.sqlite", workers=1)

    assert uncached == first == second == expected
    good_png, good_jpg, trunc_png, trunc_jpg, empty, text, small = second
    assert good_png == ImageInfo(40, 40, hashlib.sha256(paths[0].read_bytes()).hexdigest())
    assert (good_jpg.width, good_jpg.height) == (48, 64)
    assert trunc_png.reason.startswith("truncated PNG: image file is truncated (")
    assert trunc_jpg.reason.startswith("truncated JPEG: image file is truncated (")
    assert empty == BadFile(str(paths[4]), "empty file (0 bytes)")
    assert text.reason.startswith("not an image: content is text")
    assert small.reason.startswith("too small: 20x40 px")


def test_rerun_on_unchanged_folder_decodes_nothing(tmp_path, recorder, monkeypatch, caplog):
    paths = _folder(tmp_path / "data")
    missing = tmp_path / "data" / "gone.png"  # no stat, so never cached: checked on every run
    cache = tmp_path / "checks.sqlite"
    first = check_files([*paths, missing], ImageCheck(), cache=cache, workers=1)
    assert len(recorder.calls) == len(paths) + 1
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT count(*) FROM checks").fetchone()[0] == len(paths)

    recorder.calls.clear()

    def no_decoding(*args, **kw):
        raise AssertionError("an unchanged file was decoded again")

    monkeypatch.setattr(Image, "open", no_decoding)
    with caplog.at_level(logging.INFO, logger="genguard.data.files"):
        second = check_files([*paths, missing], ImageCheck(), cache=cache, workers=1, desc="rerun")
    assert second == first
    assert recorder.calls == ["gone.png"]
    assert first[-1].reason.startswith("unreadable:")
    assert "rerun: 8 files, 7 from cache, 1 checked, 6 bad" in caplog.text


def test_changed_file_is_checked_again(tmp_path, recorder):
    paths = _folder(tmp_path / "data")
    good_png, good_jpg = paths[0], paths[1]
    cache = tmp_path / "checks.sqlite"
    first = check_files(paths[:2], ImageCheck(), cache=cache, workers=1)
    assert not any(isinstance(r, BadFile) for r in first)

    # Truncated with its old mtime put back: the size alone shows the change.
    old_mtime = good_png.stat().st_mtime_ns
    _truncate(good_png)
    os.utime(good_png, ns=(old_mtime, old_mtime))
    # Same size, now text (a failed download), mtime bumped: the mtime shows the change.
    good_jpg.write_bytes(b"x" * good_jpg.stat().st_size)
    _age(good_jpg, ago_ns=HOUR_NS // 2)
    recorder.calls.clear()

    png, jpg = check_files(paths[:2], ImageCheck(), cache=cache, workers=1)
    assert recorder.calls == ["good.png", "good.jpg"]
    assert png.reason.startswith("truncated PNG: image file is truncated (")
    assert jpg.reason.startswith("not an image: content is text")


def test_changed_checker_option_is_not_served_from_the_cache(tmp_path, recorder):
    image = _image(tmp_path / "a.png", size=(40, 40))
    _age(image)
    cache = tmp_path / "checks.sqlite"
    assert ImageCheck(min_side=32).cache_key() != ImageCheck(min_side=64).cache_key()

    assert check_files([image], ImageCheck(min_side=32), cache=cache, workers=1)[0].width == 40
    [big] = check_files([image], ImageCheck(min_side=64), cache=cache, workers=1)
    assert big.reason.startswith("too small: 40x40 px (shorter side 40 < 64 px minimum)")
    assert recorder.calls == ["a.png", "a.png"]
    # Both verdicts stay cached side by side.
    assert check_files([image], ImageCheck(min_side=32), cache=cache, workers=1)[0].width == 40
    assert check_files([image], ImageCheck(min_side=64), cache=cache, workers=1) == [big]
    assert recorder.calls == ["a.png", "a.png"]


def test_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path, recorder, caplog):
    paths = _folder(tmp_path / "data")
    cache = tmp_path / "checks.sqlite"
    cache.write_bytes(np.random.default_rng(0).bytes(8192))
    with caplog.at_level(logging.WARNING, logger="genguard.data.files"):
        results = check_files(paths, ImageCheck(), cache=cache, workers=1)
    assert results == [check_image_file(p) for p in paths]
    assert "is corrupt" in caplog.text and "rebuilding" in caplog.text

    recorder.calls.clear()
    caplog.clear()
    assert check_files(paths, ImageCheck(), cache=cache, workers=1) == results
    assert recorder.calls == []  # the rebuilt cache serves the rerun
    assert "corrupt" not in caplog.text


def test_unusable_cache_location_only_costs_the_cache(tmp_path, caplog):
    paths = _folder(tmp_path / "data")
    cache = tmp_path / "a_folder.sqlite"
    cache.mkdir()  # cannot be opened as a database file
    with caplog.at_level(logging.WARNING, logger="genguard.data.files"):
        results = check_files(paths, ImageCheck(), cache=cache, workers=1)
    assert results == [check_image_file(p) for p in paths]
    assert "checking without the cache" in caplog.text


def test_just_written_files_are_checked_again(tmp_path, recorder):
    image = _image(tmp_path / "fresh.png")  # mtime inside the racy window: not cached yet
    cache = tmp_path / "checks.sqlite"
    check_files([image], ImageCheck(), cache=cache, workers=1)
    check_files([image], ImageCheck(), cache=cache, workers=1)
    assert recorder.calls == ["fresh.png", "fresh.png"]
    _age(image)
    check_files([image], ImageCheck(), cache=cache, workers=1)
    check_files([image], ImageCheck(), cache=cache, workers=1)
    assert recorder.calls == ["fresh.png", "fresh.png", "fresh.png"]


def test_two_workers_give_the_same_results_in_order(tmp_path):
    paths = _folder(tmp_path / "bad") + [_image(tmp_path / "good" / f"{i:02d}.png") for i in range(25)]
    paths = paths[::2] + paths[1::2]  # bad and good files spread over several chunks
    _age(*paths)
    one = check_files(paths, ImageCheck(), workers=1)
    two = check_files(paths, ImageCheck(), cache=tmp_path / "checks.sqlite", workers=2, chunk_size=4)
    assert two == one == [check_image_file(p) for p in paths]
    with sqlite3.connect(tmp_path / "checks.sqlite") as db:  # results from workers are cached too
        assert db.execute("SELECT count(*) FROM checks").fetchone()[0] == len(paths)


def test_truncation_is_caught_in_workers_even_if_someone_enabled_padding(tmp_path, caplog):
    paths = [_truncate(_image(tmp_path / f"t{i}.jpg", size=(64, 64))) for i in range(4)]
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with caplog.at_level(logging.WARNING, logger="genguard.data.files"):
            for workers in (1, 2):
                results = check_files(paths, ImageCheck(), workers=workers, chunk_size=1)
                assert all(r.reason.startswith("truncated JPEG") for r in results)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever switched it on
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert caplog.text.count("LOAD_TRUNCATED_IMAGES was True") == 2  # once per run, not per chunk


def test_results_round_trip_through_the_cache_encoding():
    info = ImageInfo(640, 480, "ab" * 32)
    bad = BadFile("x/y.png", "truncated PNG: image file is truncated (10 of at least 99 bytes)")
    assert decode_result(encode_result(info), "elsewhere.png", ImageInfo) == info
    # A BadFile takes the path it is asked for now, not the one it was cached under.
    assert decode_result(encode_result(bad), "z/y.png", ImageInfo) == BadFile("z/y.png", bad.reason)
    assert decode_result('["OtherInfo", {"frames": 3}]', "v.mp4", ImageInfo) is None
    assert decode_result('["ImageInfo", {"width": 1}]', "a.png", ImageInfo) is None


def test_cache_key_names_checker_version_options_and_decoder():
    import PIL

    key = ImageCheck(min_side=256).cache_key()
    assert key.startswith(f"image/v{files.IMAGE_CHECK_VERSION}(")
    assert "min_side=256" in key and f"pillow={PIL.__version__!r}" in key


def test_open_cache_can_be_shared_between_calls(tmp_path, recorder):
    paths = _folder(tmp_path / "data")
    with CheckCache(tmp_path / "checks.sqlite") as cache:
        check_files(paths[:3], ImageCheck(), cache=cache, workers=1)
        check_files(paths, ImageCheck(), cache=cache, workers=1)
    assert sorted(recorder.calls) == sorted(p.name for p in paths)


def test_workers_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        check_files([], ImageCheck(), workers=0)


def test_cache_folder_that_cannot_be_created_only_costs_the_cache(tmp_path, caplog):
    paths = _folder(tmp_path / "data")
    (tmp_path / "file").write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="genguard.data.files"):
        results = check_files(paths, ImageCheck(), cache=tmp_path / "file" / "checks.sqlite", workers=1)
    assert results == [check_image_file(p) for p in paths]
    assert "checking without the cache" in caplog.text


def test_cache_locked_by_another_run_only_costs_the_cache(tmp_path, caplog):
    paths = _folder(tmp_path / "data")
    cache_file = tmp_path / "checks.sqlite"
    CheckCache(cache_file).close()  # schema in place
    other_run = sqlite3.connect(cache_file, isolation_level=None)
    other_run.execute("BEGIN IMMEDIATE")  # another run holds the write lock for longer than we wait
    try:
        with caplog.at_level(logging.WARNING, logger="genguard.data.files"), \
                CheckCache(cache_file, timeout_s=0.1) as cache:
            results = check_files(paths, ImageCheck(), cache=cache, workers=1)
    finally:
        other_run.execute("ROLLBACK")
        other_run.close()
    assert results == [check_image_file(p) for p in paths]
    assert "cannot write" in caplog.text and "database is locked" in caplog.text
