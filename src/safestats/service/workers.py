"""``safestats serve --workers N``: N service processes on one listening socket.

Python runs one thread at a time, and most of a release's time is Python (the pipeline, the
noise, the audit record, JSON), so one process uses one core however many requests it holds.
Here the parent binds the socket and forks N workers before anything else opens: no engine, no
store connection, no thread exists yet to be copied half-way. Each worker opens its own service
(its own engine over the census and its own connections to the one store) and accepts on the
shared socket; the kernel hands each new connection to one of them. Nothing a guarantee needs
lives in a worker's memory (docs/deployment.md, "Several replicas"): the budget is reserved in
the store, the sdc structure is read and published under the store's lock, the audit log's head
is locked per append.

The parent only supervises: SIGTERM or SIGINT is passed on to every worker, which stops
accepting, finishes its requests in flight (``shutdown_grace_s``) and exits; the parent then
exits too. A parent killed outright (SIGKILL) leaves no worker behind: each watches a pipe
only the parent holds open, and stops the same way when it closes. A worker that dies while
serving (killed, out of memory) is started again; one that dies before it is ready to serve
(a census, key or store it cannot open, a certificate uvicorn cannot load) stops them all,
and ``serve`` exits with an error rather than restart it in a loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["RESTART_S", "bind", "supervise"]

log = logging.getLogger("safestats.http")

#: a worker that dies sooner than this after its start is started again only after this long
RESTART_S = 1.0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (IPv6 when ``host`` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it a response's second write waits for the client's delayed ACK (40 ms a request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        from safestats.errors import ConfigError

        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _stop_with_parent(alive: int) -> None:
    """In a worker: when the parent is gone (killed, even by SIGKILL), stop as at SIGTERM (the
    requests in flight end), rather than serve on unsupervised."""
    while True:
        try:
            if not os.read(alive, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os.kill(os.getpid(), signal.SIGTERM)


def supervise(workers: int, run: Callable[[int, Callable[[], None]], None]) -> int:
    """Fork ``workers`` processes, each calling ``run(index, ready)`` (which calls ``ready()``
    once it is serving, then serves until it is told to stop), keep them running, and pass a stop
    signal on. Returns the exit status for ``serve``: 0 after a stop, 1 if a worker failed
    before it was ready."""
    children: dict[int, tuple[int, int, float]] = {}  # pid -> (index, its ready pipe, started)
    stopping = False
    received: list[int] = []
    alive_r, alive_w = os.pipe()  # the parent holds the write end: its death closes it

    def start(index: int) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            # a group of its own: a Ctrl-C at the terminal reaches the parent alone, which passes it
            # on once (a second SIGINT would make uvicorn drop the requests in flight)
            os.setpgid(0, 0)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.close(alive_w)
            os.close(ready_r)
            for _, other, _ in children.values():  # the other workers' pipes are the parent's
                os.close(other)
            threading.Thread(target=_stop_with_parent, args=(alive_r,), daemon=True).start()

            def ready() -> None:
                os.write(ready_w, b"1")
                os.close(ready_w)

            status = 0
            try:
                run(index, ready)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
            except BaseException as e:  # noqa: BLE001 - reported, then the worker exits
                print(f"safestats: worker {index}: {type(e).__name__}: {e}", file=sys.stderr)
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
        os.close(ready_w)
        children[pid] = (index, ready_r, time.monotonic())

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if frame is not None:  # a signal, not a worker's failed start
            received.append(signum)
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(workers):
        start(index)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        index, ready_r, started = children.pop(pid)
        was_ready = _said_ready(ready_r)
        if stopping:
            continue
        how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"status {os.WEXITSTATUS(status)}"
        fields = {"worker": index, "pid": pid, "exit": how}
        if not was_ready:
            log.error("worker failed at start", extra={"fields": fields})
            failed = True
            stop(signal.SIGTERM, None)
            continue
        log.warning("worker exited; starting it again", extra={"fields": fields})
        if time.monotonic() - started < RESTART_S:  # dying as soon as it serves: not in a tight loop
            time.sleep(RESTART_S)
        start(index)
    if received and not failed:  # exit by the signal, as a single process does (systemd expects it)
        signal.signal(received[0], signal.SIG_DFL)
        os.kill(os.getpid(), received[0])
    return 1 if failed else 0


def _said_ready(pipe: int) -> bool:
    """Whether the worker of ``pipe`` wrote its byte before it exited (the pipe is then closed)."""
    os.set_blocking(pipe, False)
    try:
        return os.read(pipe, 1) == b"1"
    except BlockingIOError:
        return False
    finally:
        os.close(pipe)
