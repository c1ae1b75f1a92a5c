"""A lock that serves its waiters in the order they came.

``threading.Lock`` promises no order: a thread that releases it and asks again at once usually
wins it back, and under a hundred waiting requests one may wait for seconds while later ones pass
(the 100-client round's tail: sdc releases, one at a time per disclosure domain, p50 1.4 s and p95
6.4 s). Here a release hands the lock straight to the longest waiter.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

__all__ = ["FairLock"]


class FairLock:
    """First come, first served; ``with`` it, or ``acquire(timeout=…)`` and ``release()``."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def acquire(self, timeout: float | None = None) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        if turn.acquire(timeout=-1 if timeout is None else timeout):
            return True  # handed over: held for us by the releaser
        with self._mutex:
            try:
                self._waiters.remove(turn)
            except ValueError:  # handed over as the wait ran out: ours after all
                return True
            return False

    def release(self) -> None:
        with self._mutex:
            if not self._held:
                raise RuntimeError("release of a FairLock that is not held")
            if self._waiters:
                self._waiters.popleft().release()  # stays held, by the next in line
            else:
                self._held = False

    def locked(self) -> bool:
        return self._held

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
