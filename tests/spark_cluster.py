"""A standalone Spark cluster on loopback (one master, one worker) from the pyspark installation,
for tests/functional/test_spark_cluster.py and benchmarks/bench_spark_cluster.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state(ui_port: int) -> dict[str, Any]:
    """The master's status page as JSON (workers, applications), or {} while it is not up."""
    try:
        return dict(httpx.get(f"http://127.0.0.1:{ui_port}/json/", timeout=1).json())
    except (httpx.HTTPError, ValueError):
        return {}


@contextmanager
def standalone(tmp: Path, *, cores: int = 2, memory: str = "2g") -> Iterator[dict[str, Any]]:
    """Start a master and a worker; yields the master URL, its UI port, the environment and
    the seconds until the worker registered. Both are stopped when the block ends."""
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(tmp / "logs"),
        "SPARK_WORKER_DIR": str(tmp / "work"),
        "PYSPARK_PYTHON": sys.executable,
    }
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    spark_class = str(home / "bin" / "spark-class")
    started = time.perf_counter()
    with open(tmp / "cluster.log", "w") as logs:
        master = subprocess.Popen(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            env=env,
            stdout=logs,
            stderr=logs,
        )
        worker = subprocess.Popen(
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                f"spark://127.0.0.1:{port}",
                "--host",
                "127.0.0.1",
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--webui-port",
                str(worker_ui),
                "--work-dir",
                str(tmp / "work"),
            ],
            env=env,
            stdout=logs,
            stderr=logs,
        )
        try:
            for _ in range(600):
                if state(ui).get("aliveworkers", 0) >= 1:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"the Spark cluster did not come up; see {tmp / 'cluster.log'}")
            yield {"url": f"spark://127.0.0.1:{port}", "ui": ui, "env": env, "start_s": time.perf_counter() - started}
        finally:
            for proc in (worker, master):
                proc.terminate()
            for proc in (worker, master):
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
