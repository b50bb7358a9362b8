"""Check many files once: decode in a process pool on the first pass, answer from SQLite afterwards.

Checking a user's data folder means decoding and hashing every file, on every run (measured: 25 s for
a 20,000-image ForenSynths folder on 2 cores; tens of minutes for a GenImage-sized one). Files rarely
change between runs, so a result is cached under the file's absolute path, size and ``st_mtime_ns``
plus the checker's ``cache_key()`` (name, version of the checking logic, options, decoder version).
A rerun on an unchanged folder then costs one ``stat`` per file and no decoding; a file whose size or
mtime changed is checked again.

The engine (``check_files``) knows nothing about images: it takes any *checker*, a small picklable
object with ``__call__(path) -> info | BadFile``, ``cache_key()``, ``cacheable(result)``,
``checking()`` and an ``info_type`` dataclass (see ``FileChecker``). ``ImageCheck`` is the image one;
a video checker plugs in the same way: a frozen dataclass ``VideoCheck(min_frames: int = 8)`` with
``name = "video"``, a version constant, ``info_type = VideoInfo`` (frames, width, height, sha256),
``cache_key()`` returning ``options_cache_key(self, av=av.__version__)`` and ``checking()`` returning
``contextlib.nullcontext()``.

Decisions:

* Bad results are cached too: a corrupt file stays corrupt until its bytes (hence size or mtime)
  change. Results that depend on more than the bytes are not cached (``cacheable``): for images an
  unreadable file (permissions change only ``ctime``, not ``mtime``) and a decompression-bomb refusal
  (depends on ``Image.MAX_IMAGE_PIXELS``). A path that cannot be ``stat``-ed is never cached.
* A file modified less than ``RACY_WINDOW_NS`` before the scan started is checked but not cached:
  file timestamps are coarse (a kernel tick on ext4, 2 s on FAT), so a file rewritten in the same
  tick with the same size would otherwise keep a stale result (git's "racily clean" problem).
* The cache is one SQLite file in the default rollback-journal mode, not WAL: WAL needs shared memory
  and "does not work over a network filesystem" (sqlite.org/wal.html), where datasets often live.
  Writes go in transactions of ``WRITE_BATCH`` rows, so an interrupted first pass keeps what it did.
  Concurrent runs serialise on SQLite's file lock (``busy timeout`` ``CACHE_TIMEOUT_S``).
* The cache never fails a run: a missing file is created; a corrupt one is deleted and rebuilt with a
  warning; a locked, unreadable or read-only one is skipped (or only read) with a warning.
* Pool workers are forked on Linux (``START_METHOD``), as torch's DataLoader does by default.
  Measured: forking from a process with torch imported and its OpenMP pool running works, and is as
  fast as ``forkserver``. ``forkserver``/``spawn`` would re-run a script's unguarded top level in
  every worker (RuntimeError without ``if __name__ == "__main__"``) and could not unpickle a checker
  defined in a notebook. Workers only decode, hash and log (logging re-creates its locks after fork).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import sqlite3
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from genguard.data.manifest import IMAGE_SUFFIXES, BadFile, sha256_file
from genguard.progress import progress

log = logging.getLogger(__name__)

DEFAULT_MIN_SIDE = 32
# Bump when ImageCheck's verdicts change (new checks, different messages): cached results then miss.
IMAGE_CHECK_VERSION = 1

CHUNK_SIZE = 64  # paths per pool task: one pickle round trip per chunk, not per file
WRITE_BATCH = 1000  # cache rows per write transaction
LOOKUP_BATCH = 500  # paths per SELECT ... IN (...); well below SQLite's 32766-variable limit
CACHE_TIMEOUT_S = 30.0  # how long to wait for another run's write lock before giving up on the cache
RACY_WINDOW_NS = 2_000_000_000  # see the module docstring
CACHE_SCHEMA_VERSION = 1
START_METHOD = "fork"  # pool start method on Linux; see the module docstring


# --------------------------------------------------------------------------------------------------
# Checking one image


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    sha256: str


def _sniff_format(head: bytes) -> str | None:
    """Image format from the magic bytes, independent of the suffix and of PIL succeeding."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    return None


def describe_content(head: bytes, expected: str = "image") -> str:
    """Say what a file that is not the ``expected`` kind (image, video) holds, from its first bytes;
    the usual culprits (a Git LFS pointer, a saved login page) get a hint."""
    lowered = head.lstrip().lower()
    if lowered.startswith(b"version https://git-lfs"):
        return f"a Git LFS pointer (the {expected} was never downloaded; run `git lfs pull`)"
    if lowered.startswith((b"<!doctype html", b"<html")):
        article = "an" if expected[:1] in "aeiou" else "a"
        return f"an HTML page (usually a failed download or a login page saved under {article} {expected} name)"
    for magic, what in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                        (b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "gzip data"), (b"%PDF", "a PDF"),
                        (b"\x00\x00\x00\x1cftyp", "an ISO media file (HEIC/AVIF/MP4?)")):
        if head.startswith(magic):
            return what
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as err:  # a multi-byte character cut by the end of the head is still text
            text = head[:err.start].decode("utf-8") if err.start > len(head) - 4 else None
        if text is not None:
            return f"text (starts with {text[:40]!r})"
    return f"unknown data (first bytes {head[:8].hex(' ')})"


def _png_expected_size(path: Path, size: int) -> int | None:
    """Minimum byte count the PNG's own chunk lengths imply, or None when its chunks fit the file."""
    with open(path, "rb") as handle:
        offset = 8
        while True:
            handle.seek(offset)
            header = handle.read(8)
            if len(header) < 8:  # the file ends before IEND: at least an IEND chunk is missing
                return offset + 12
            length, kind = struct.unpack(">I4s", header)
            end = offset + 12 + length
            if end > size:
                return end + (0 if kind == b"IEND" else 12)  # plus the IEND chunk still to come
            if kind == b"IEND":
                return None
            offset = end


def _expected_size(path: Path, fmt: str, head: bytes, size: int) -> tuple[int, bool] | None:
    """(expected bytes, exact?) from the format's own header, when it records one."""
    if fmt == "PNG":
        expected = _png_expected_size(path, size)
        return (expected, False) if expected else None
    if fmt == "BMP" and len(head) >= 6:
        expected = struct.unpack("<I", head[2:6])[0]
        return (expected, True) if expected > size else None
    if fmt == "WEBP" and len(head) >= 8:
        expected = struct.unpack("<I", head[4:8])[0] + 8
        return (expected, True) if expected > size else None
    return None


def _failure_reason(path: Path, fmt: str | None, head: bytes, size: int, err: Exception) -> str:
    message = str(err) or type(err).__name__
    if fmt is None:
        return f"not an image: content is {describe_content(head, 'image')}"
    expected = _expected_size(path, fmt, head, size)
    looks_truncated = (expected is not None or "truncat" in message.lower()
                       or isinstance(err, (EOFError, struct.error)))
    if looks_truncated:
        if expected is not None:
            amount = f"{size} of {'' if expected[1] else 'at least '}{expected[0]} bytes"
        elif fmt == "JPEG" and not _ends_with_jpeg_eoi(path):
            amount = f"{size} bytes, no end-of-image marker"
        else:
            amount = f"{size} bytes"
        # PIL's own wording ("Truncated File Read", "N bytes not processed") adds nothing here.
        return f"truncated {fmt}: image file is truncated ({amount})"
    return f"corrupt {fmt}: {type(err).__name__}: {message}"


def _ends_with_jpeg_eoi(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64))
        # Some encoders pad after the EOI marker, so look at the tail, not only the last two bytes.
        return b"\xff\xd9" in handle.read()


def check_image_file(path: str | Path, *, min_side: int = DEFAULT_MIN_SIDE) -> ImageInfo | BadFile:
    """Decode ``path`` fully and hash it; a ``BadFile`` with a precise reason when it cannot be used.

    PIL's ``verify()`` catches broken PNG chunks (CRC, truncated chunks) without decoding; a full
    ``load()`` then catches what ``verify()`` does not look at (truncated JPEG scans, bad pixel data).
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` must be False, otherwise ``load()`` pads truncated images
    (``strict_image_loading`` ensures it).
    """
    from PIL import Image  # keeps `import genguard.data.files` light

    path = Path(path)
    name = str(path)
    if path.is_symlink() and not path.exists():
        return BadFile(name, f"broken symlink to {os.readlink(path)} (content not fetched? "
                             f"`dvc pull` / `git annex get`)")
    try:
        size = path.stat().st_size
        if size == 0:
            return BadFile(name, "empty file (0 bytes)")
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as err:
        return BadFile(name, f"unreadable: {err.strerror or err} ({type(err).__name__})")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return BadFile(name, f"unsupported file type {path.suffix or '(no suffix)'!r}: accepted image "
                             f"suffixes are {', '.join(sorted(IMAGE_SUFFIXES))}; convert or remove it")
    fmt = _sniff_format(head)
    try:
        with Image.open(path) as image:
            fmt = image.format or fmt
            image.verify()
        with Image.open(path) as image:
            image.load()
            width, height = image.size
    except Image.DecompressionBombError as err:
        return BadFile(name, f"too large to decode safely: {err}")
    except Exception as err:  # noqa: BLE001 - any decoder failure is a property of the file
        return BadFile(name, _failure_reason(path, fmt, head, size, err))
    if min(width, height) < min_side:
        return BadFile(name, f"too small: {width}x{height} px (shorter side {min(width, height)} < "
                             f"{min_side} px minimum)")
    try:
        digest = sha256_file(path)
    except OSError as err:
        return BadFile(name, f"unreadable: {err.strerror or err} ({type(err).__name__})")
    return ImageInfo(width, height, digest)


@contextlib.contextmanager
def strict_image_loading() -> Iterator[None]:
    """Switch PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` off for a scan, restoring it afterwards.

    Another library may have switched truncated-image padding on process-wide; truncated files would
    then pass as good images. Not thread-safe against other code toggling the flag concurrently.
    """
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    if previous:
        log.warning("PIL ImageFile.LOAD_TRUNCATED_IMAGES was True; switching it off while checking images")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


# --------------------------------------------------------------------------------------------------
# Checkers: what check_files runs on each file


class FileChecker(Protocol):
    """What ``check_files`` needs from a checker. It must pickle (it is sent to pool workers)."""

    info_type: ClassVar[type]  # the dataclass a good file yields; its fields must be JSON scalars

    def __call__(self, path: str) -> Any:
        """``info_type`` instance for a usable file, ``BadFile(str(Path(path)), reason)`` otherwise."""

    def cache_key(self) -> str:
        """Name, logic version and options: results are reused only under an equal key."""

    def cacheable(self, result: Any) -> bool:
        """False for verdicts that depend on more than the file's bytes (e.g. permissions)."""

    def checking(self) -> contextlib.AbstractContextManager[Any]:
        """Context entered around a run of checks in each process (global decoder settings)."""


def options_cache_key(checker: Any, **extra: object) -> str:
    """``name/vN(option=value,...)`` from a dataclass checker's class attributes and fields.

    Every dataclass field counts as an option, so a new option can never be forgotten in the key;
    ``extra`` adds what is not a field, such as the decoder library's version.
    """
    options = {f.name: getattr(checker, f.name) for f in dataclasses.fields(checker)} | extra
    return f"{checker.name}/v{checker.version}(" + ",".join(f"{k}={v!r}" for k, v in options.items()) + ")"


# Verdicts that depend on the environment, not on the bytes (see the module docstring).
_IMAGE_UNCACHED_REASONS = ("unreadable:", "too large to decode safely:", "broken symlink")


@dataclass(frozen=True)
class ImageCheck:
    """Full decode + sha256 of one image file (``check_image_file``), as a picklable checker."""

    min_side: int = DEFAULT_MIN_SIDE

    name: ClassVar[str] = "image"
    version: ClassVar[int] = IMAGE_CHECK_VERSION
    info_type: ClassVar[type] = ImageInfo

    def __call__(self, path: str | Path) -> ImageInfo | BadFile:
        return check_image_file(path, min_side=self.min_side)

    def cache_key(self) -> str:
        # Pillow upgrades change which damaged files decode, so its version is part of the key.
        import PIL

        return options_cache_key(self, pillow=PIL.__version__)

    def cacheable(self, result: ImageInfo | BadFile) -> bool:
        return not (isinstance(result, BadFile) and result.reason.startswith(_IMAGE_UNCACHED_REASONS))

    def checking(self) -> contextlib.AbstractContextManager[None]:
        return strict_image_loading()


# --------------------------------------------------------------------------------------------------
# The cache

# (absolute path, size, st_mtime_ns): what a cached result is valid for. The path is absolute but
# not resolved, so a symlink is its own entry (``os.stat`` follows it to the target's size and mtime).
Stat = tuple[str, int, int]


def _stat(name: str, cwd: str) -> Stat | None:
    try:
        st = os.stat(name)
    except OSError:  # missing, broken symlink, no permission: the checker says which
        return None
    # startswith first: os.path.isabs alone is a third of this function's cost on a cached rerun.
    absolute = name.startswith("/") or os.path.isabs(name)
    return (name if absolute else os.path.join(cwd, name)), st.st_size, st.st_mtime_ns


def encode_result(result: Any) -> str:
    """JSON with a type tag: ``["BadFile", reason]`` or ``[<info class name>, {field: value}]``.

    A ``BadFile``'s path is not stored: it is rebuilt from the path asked for, so a cache written
    from another working directory names files the way the caller does.
    """
    if isinstance(result, BadFile):
        return json.dumps(["BadFile", result.reason])
    return json.dumps([type(result).__name__, dataclasses.asdict(result)], separators=(",", ":"))


_JSON = json.JSONDecoder()  # reused: json.loads builds its wrapper call chain for every row


def decode_result(text: str, name: str, info_type: type) -> Any:
    """The result ``encode_result`` stored, or None when it does not fit ``info_type`` any more."""
    try:
        tag, value = _JSON.decode(text)
        if tag == "BadFile":
            return BadFile(str(Path(name)), value)
        if tag == info_type.__name__:
            return info_type(**value)
    except (ValueError, TypeError):
        pass
    return None


class CheckCache:
    """Check results in one SQLite file; every failure degrades to "no cache" with a warning.

    Table ``checks(checker, path, size, mtime_ns, result)``, primary key (checker, path), with
    ``checker`` an id in ``checkers(id, key)``. One row per path and checker: a changed file's row
    is replaced, so the cache grows with the data, not with the number of runs. Rows of old checker
    keys stay until the file is deleted (it is only a cache).
    """

    def __init__(self, path: str | Path, *, timeout_s: float = CACHE_TIMEOUT_S) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.db: sqlite3.Connection | None = None
        self.writable = True
        try:
            self.db = self._connect()
        except (OSError, sqlite3.Error) as err:  # OSError: its folder cannot be created
            self._failed("open", err)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) in store().
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            # The first statement is what fails on a file that is not a database.
            if db.execute("PRAGMA user_version").fetchone()[0] != CACHE_SCHEMA_VERSION:
                self._create_schema(db)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _create_schema(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # another run creating the schema at once waits here
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] != CACHE_SCHEMA_VERSION:
                db.execute("DROP TABLE IF EXISTS checks")
                db.execute("DROP TABLE IF EXISTS checkers")
                db.execute("CREATE TABLE checkers (id INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL)")
                db.execute("CREATE TABLE checks (checker INTEGER NOT NULL, path TEXT NOT NULL, "
                           "size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, result TEXT NOT NULL, "
                           "PRIMARY KEY (checker, path)) WITHOUT ROWID")
                db.execute(f"PRAGMA user_version = {CACHE_SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _failed(self, action: str, err: Exception) -> None:
        """Corrupt file: delete and rebuild it. Locked/unreadable/read-only: run without the cache.

        sqlite3 raises ``OperationalError`` for busy, locked, read-only, cannot-open and I/O errors,
        and plain ``DatabaseError`` for SQLITE_CORRUPT and SQLITE_NOTADB ("file is not a database").
        """
        self.close()
        if isinstance(err, sqlite3.OperationalError) or not isinstance(err, sqlite3.DatabaseError):
            log.warning("file check cache %s: cannot %s (%s: %s); checking without the cache this run",
                        self.path, action, type(err).__name__, err)
            return
        log.warning("file check cache %s is corrupt (%s: %s); deleting and rebuilding it",
                    self.path, type(err).__name__, err)
        try:
            for leftover in (self.path, Path(f"{self.path}-journal")):
                leftover.unlink(missing_ok=True)
            self.db = self._connect()
        except (OSError, sqlite3.Error) as again:
            log.warning("file check cache %s: rebuilding failed (%s); checking without the cache this run",
                        self.path, again)
            self.close()

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def __enter__(self) -> CheckCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, key: str, stats: Sequence[Stat]) -> dict[str, str]:
        """Encoded results, by absolute path, of the files whose size and mtime match their row."""
        if self.db is None or not stats:
            return {}
        wanted = {stat[0]: stat for stat in stats}
        paths = list(wanted)
        found: dict[str, str] = {}
        try:
            row = self.db.execute("SELECT id FROM checkers WHERE key = ?", (key,)).fetchone()
            if row is None:
                return {}
            for start in range(0, len(paths), LOOKUP_BATCH):
                batch = paths[start:start + LOOKUP_BATCH]
                query = ("SELECT path, size, mtime_ns, result FROM checks WHERE checker = ? AND path IN "
                         f"({','.join('?' * len(batch))})")
                for path, size, mtime_ns, result in self.db.execute(query, (row[0], *batch)):
                    if wanted[path][1:] == (size, mtime_ns):
                        found[path] = result
        except sqlite3.Error as err:
            self._failed("read", err)
            return {}
        return found

    def store(self, key: str, rows: Sequence[tuple[Stat, str]]) -> None:
        """Write (stat, encoded result) rows in one transaction; a failure loses only this batch."""
        if self.db is None or not self.writable or not rows:
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")  # take the write lock now, waiting up to timeout_s
            try:
                self.db.execute("INSERT OR IGNORE INTO checkers (key) VALUES (?)", (key,))
                checker = self.db.execute("SELECT id FROM checkers WHERE key = ?", (key,)).fetchone()[0]
                self.db.executemany("INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?, ?)",
                                    [(checker, *stat, result) for stat, result in rows])
                self.db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as err:  # locked past the timeout, read-only, disk full
            log.warning("file check cache %s: cannot write (%s); results of this run are not cached",
                        self.path, err)
            self.writable = False
        except sqlite3.Error as err:
            self._failed("write", err)


@contextlib.contextmanager
def _opened(cache: str | Path | CheckCache | None) -> Iterator[CheckCache | None]:
    """An open cache for ``cache`` given as a path (closed afterwards), as a cache, or None."""
    if cache is None or isinstance(cache, CheckCache):
        yield cache
        return
    with CheckCache(cache) as opened:
        yield opened


# --------------------------------------------------------------------------------------------------
# Running checks: in this process or in a pool


def available_cpus() -> int:
    """CPUs this process may run on (respects taskset/cpusets, unlike ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_chunk(checker: FileChecker, names: list[str]) -> list[Any]:
    """One pool task: a chunk of paths checked inside the checker's context."""
    with checker.checking():
        return [checker(name) for name in names]


def _pool_context() -> multiprocessing.context.BaseContext:
    """``fork`` on Linux (see the module docstring), the platform's default start method elsewhere."""
    return multiprocessing.get_context(START_METHOD if sys.platform == "linux" else None)


def _checked_chunks(checker: FileChecker, chunks: list[list[str]], workers: int) -> Iterator[list[Any]]:
    """Results per chunk, in order; a pool only when there is more than one chunk and worker.

    The checker's context is entered here too, so forked workers inherit its settings and a warning
    it logs (e.g. about ``LOAD_TRUNCATED_IMAGES``) appears once, not once per chunk.
    """
    with checker.checking():
        if workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                yield [checker(name) for name in chunk]
            return
        pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context())
        try:
            yield from pool.map(_check_chunk, [checker] * len(chunks), chunks)
        except BaseException:  # Ctrl-C, a failing consumer or checker: drop the queued chunks
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def check_files(
    paths: Iterable[str | Path],
    checker: FileChecker,
    *,
    cache: str | Path | CheckCache | None = None,
    workers: int | None = None,
    desc: str = "checking files",
    show_progress: bool = True,
    chunk_size: int = CHUNK_SIZE,
) -> list[Any]:
    """``checker(path)`` for every path, in input order, reusing cached results of unchanged files.

    ``cache``: SQLite file (created when missing) or an open ``CheckCache``; None checks everything.
    ``workers``: processes for the files not in the cache (None: the CPUs available; 1: this
    process, no pool). ``desc``/``show_progress``: the progress bar (or log lines) over the files
    being checked. Results are ``checker.info_type`` instances or ``BadFile``s whose path is
    ``str(Path(p))``. Logs one summary line.
    """
    workers = available_cpus() if workers is None else workers
    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers and chunk_size must be >= 1, got {workers} and {chunk_size}")
    started, scan_ns = time.monotonic(), time.time_ns()
    names = [os.fspath(p) for p in paths]
    key = checker.cache_key()
    with _opened(cache) as store:
        cwd = os.getcwd()
        stats = [_stat(name, cwd) for name in names] if store is not None else [None] * len(names)
        hits = store.lookup(key, [s for s in stats if s is not None]) if store is not None else {}
        results: list[Any] = [None] * len(names)
        todo = []
        for i, stat in enumerate(stats):
            cached = hits.get(stat[0]) if stat is not None else None
            if cached is not None:
                results[i] = decode_result(cached, names[i], checker.info_type)
            if results[i] is None:
                todo.append(i)
        # Only files older than the racy window are cached (see the module docstring).
        _check_uncached(names, stats, todo, results, checker, store, key, workers, chunk_size,
                        desc if show_progress else None, cacheable_before=scan_ns - RACY_WINDOW_NS)
    bad = sum(isinstance(r, BadFile) for r in results)
    log.info("%s: %d files, %d from cache, %d checked, %d bad, %.1f s (%d worker%s)", desc, len(names),
             len(names) - len(todo), len(todo), bad, time.monotonic() - started, workers,
             "" if workers == 1 else "s")
    return results


def _check_uncached(names: list[str], stats: list[Stat | None], todo: list[int], results: list[Any],
                    checker: FileChecker, store: CheckCache | None, key: str, workers: int, chunk_size: int,
                    desc: str | None, *, cacheable_before: int) -> None:
    """Check ``names[todo]`` into ``results``; cacheable results go to ``store`` in batches.

    ``desc`` None: no progress display.
    """
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
    pending: list[tuple[Stat, str]] = []
    try:
        with (progress(desc=desc or "", total=len(todo), unit="file", enabled=bool(todo and desc)) as bar,
              contextlib.closing(_checked_chunks(checker, [[names[i] for i in c] for c in chunks],
                                                 workers)) as outputs):
            for indices, chunk_results in zip(chunks, outputs, strict=True):
                for i, result in zip(indices, chunk_results, strict=True):
                    results[i] = result
                    stat = stats[i]
                    if stat is not None and stat[2] < cacheable_before and checker.cacheable(result):
                        pending.append((stat, encode_result(result)))
                bar.update(len(indices))
                if store is not None and len(pending) >= WRITE_BATCH:
                    store.store(key, pending)
                    pending = []
    finally:  # also on Ctrl-C: what was checked stays checked
        if store is not None:
            store.store(key, pending)


# --------------------------------------------------------------------------------------------------
# Listing the folders of a published layout

#: Files a dataset folder carries beside its data (docs, lists, sidecars): never a data file.
NON_DATA_SUFFIXES = frozenset({".txt", ".json", ".md", ".yaml", ".yml", ".csv", ".log"})
NON_DATA_STEMS = frozenset({"readme", "license", "licence", "thumbs", "desktop"})
SKIPPED_DIRS = frozenset({"__macosx", "__pycache__"})


def is_non_data(name: str) -> bool:
    lower = name.lower()
    stem, suffix = os.path.splitext(lower)
    return lower.startswith(".") or suffix in NON_DATA_SUFFIXES or stem in NON_DATA_STEMS


def scan_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """Sorted (sub-folders, data files) of ``folder``: hidden and archive-tool folders and obvious non-data
    files skipped. Broken symlinks (a git-annex tree without content) count as files: the checks name them."""
    dirs: list[Path] = []
    files: list[Path] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir():
                if not entry.name.startswith(".") and entry.name.lower() not in SKIPPED_DIRS:
                    dirs.append(Path(entry.path))
            elif not is_non_data(entry.name):
                files.append(Path(entry.path))
    return sorted(dirs), sorted(files)
