"""FairLock: waiters are served in the order they came; a wait that runs out leaves the queue."""

from __future__ import annotations

import threading
import time

import pytest

from safestats.store.locks import FairLock


def _queue_up(lock: FairLock, n: int, order: list[int]) -> list[threading.Thread]:
    """``n`` threads that wait for ``lock`` one after another (each queued before the next
    starts) and note their number when they get it."""
    threads = []
    for i in range(n):

        def take(i: int = i) -> None:
            with lock:
                order.append(i)

        t = threading.Thread(target=take)
        t.start()
        while len(lock._waiters) < i + 1:  # queued: the next one comes after it
            time.sleep(0.001)
        threads.append(t)
    return threads


def test_waiters_get_the_lock_in_the_order_they_came_and_a_releaser_cannot_take_it_back():
    lock, order = FairLock(), []
    lock.acquire()
    threads = _queue_up(lock, 20, order)
    lock.release()
    # the thread that released it asks again at once: it goes to the back of the queue
    assert lock.acquire(timeout=5)
    order.append(-1)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [*range(20), -1]
    assert not lock.locked()


def test_a_wait_that_runs_out_leaves_the_queue_and_the_lock_goes_on_to_the_next():
    lock, order = FairLock(), []
    lock.acquire()
    started = time.perf_counter()
    assert lock.acquire(timeout=0.05) is False
    assert time.perf_counter() - started >= 0.05
    assert not lock._waiters
    threads = _queue_up(lock, 3, order)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2] and not lock.locked()
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


def test_many_threads_hold_it_one_at_a_time():
    lock, inside, most = FairLock(), [0], [0]

    def work() -> None:
        for _ in range(200):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1 and not lock.locked()
