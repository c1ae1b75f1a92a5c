"""`safestats serve --workers N` over the sample census for the tests (the `serve` fixture in
conftest.py): its log in a file, its workers' pids from their `started` lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from safestats.query.model import Aggregate, Query

__all__ = ["BIN", "Served", "alive", "until"]

BIN = Path(sys.executable).parent / "safestats"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def until(check, seconds: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"not within {seconds} s: {what}")


class Served:
    """`safestats serve --workers N` over the sample census, its log in a file."""

    def __init__(self, sample_dir: Path, tmp_path: Path, workers: int, *, user: bool = True, **env: str) -> None:
        self.store = f"sqlite:///{tmp_path / 'store.db'}"
        self.env = {
            **os.environ,
            "SAFESTATS_DATA_DIR": str(sample_dir),
            "SAFESTATS_STORE_URL": self.store,
            "SAFESTATS_SECRET_KEY_FILE": str(tmp_path / "key"),
            "SAFESTATS_SIGNING_KEY_FILE": str(tmp_path / "signing.key"),
            **env,
        }
        add = [str(BIN), "users", "add", "pat", "--group", "I_STORE_SC_USERS", "--org", "DfE"]
        self.token = (
            subprocess.run(add, env=self.env, capture_output=True, text=True, check=True).stdout.strip() if user else ""
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "serve.log"
        self.log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(self.port), "--workers", str(workers)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
            start_new_session=True,  # a process group of its own, as a terminal gives it
        )

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.log_path.read_text().splitlines() if x.startswith("{")]

    def started(self) -> list[dict]:
        return [x for x in self.lines() if x["message"] == "started"]

    def ask(self, epsilon: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {self.token}"}
        query = Query("PupilOnRoll", (Aggregate("count"),), ("phase",), epsilon=epsilon).to_wire()
        return httpx.post(f"{self.base}/v1/query", json={"query": query}, headers=auth, timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for x in self.started():
            if alive(x["pid"]):
                os.kill(x["pid"], signal.SIGKILL)
        self.log_file.close()
