"""Progress reporting that suits both a terminal and a log file.

On a terminal a tqdm bar redraws in place. In a log that is not a terminal (CI, ``dvc repro``,
``kedro run > log``) a redrawn bar becomes thousands of carriage-return fragments, so there the bar
is off and a plain INFO line reports progress at most every ``log_every_s`` seconds, plus one line
when work that took more than a few seconds ends. ``TQDM_DISABLE=1`` silences both (the test suite sets it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

# tqdm.std, not tqdm.auto: the asyncio wrapper behind tqdm.auto opens its iterable eagerly, which
# starts a DataLoader (its workers, its seed draw) a second time.
from tqdm.std import tqdm

T = TypeVar("T")
log = logging.getLogger("genguard.progress")

DEFAULT_LOG_EVERY_S = 30.0
QUIET_BELOW_S = 5.0


def _silenced() -> bool:
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def _interactive() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class _LoggedProgress:
    """The part of tqdm's interface genguard uses, reported as rate-limited log lines."""

    def __init__(self, iterable: Iterable[Any] | None, desc: str, total: int | None, unit: str,
                 log_every_s: float) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.log_every_s = 0, log_every_s
        self.postfix = ""
        self._started = self._last = time.monotonic()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> _LoggedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}{rate}{extra} ({elapsed:.0f} s)"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.log_every_s:
            self._last = now
            log.info(self._line())

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        # Short work ends silently (its caller logs the result); long work gets a closing line.
        if not self._closed:
            self._closed = True
            if self.n and time.monotonic() - self._started >= QUIET_BELOW_S:
                log.info(self._line())


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True, log_every_s: float = DEFAULT_LOG_EVERY_S) -> Any:
    """A tqdm bar on a terminal, rate-limited log lines elsewhere, nothing when disabled.

    Use like tqdm: iterate over it, or ``with progress(total=n, desc=...) as bar: bar.update()``.
    """
    if not enabled or _silenced():
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=True)
    if _interactive():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False)
    return _LoggedProgress(iterable, desc, total, unit, log_every_s)
