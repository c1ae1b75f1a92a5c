"""Service replicas behind nginx, for the replica tests and benchmarks/bench_replicas.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import httpx

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
BIN = Path(sys.executable).parent / "safestats"

NGINX_CONF = """
worker_processes 1;
daemon off;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream safestats {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://safestats;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-Id $request_id;
            proxy_read_timeout 120s;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen | None = None) -> None:
    for _ in range(600):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/ready", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never became ready")


class Cluster:
    """Replicas of the service and nginx in front of them."""

    def __init__(self, tmp: Path, env: dict[str, str], replicas: int) -> None:
        self.tmp, self.env = tmp, env
        self.ports = [_free_port() for _ in range(replicas)]
        self.procs: list[subprocess.Popen] = []
        for port in self.ports:
            log = open(tmp / f"replica-{port}.log", "w")  # noqa: SIM115 - closed in stop()
            self.procs.append(
                subprocess.Popen([str(BIN), "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
            )
            log.close()
        for port, proc in zip(self.ports, self.procs, strict=True):
            _wait_ready(f"http://127.0.0.1:{port}", proc)
        self.port = _free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp,
                port=self.port,
                user="user root;" if os.geteuid() == 0 else "",
                servers="\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=30s;" for p in self.ports),
            )
        )
        self.nginx = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(conf)], stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        _wait_ready(self.url)

    def metric(self, index: int, route: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.ports[index]}/v1/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("safestats_requests_total{") and f'route="{route}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def failures(self) -> list[str]:
        """The replicas' ``failed`` log lines (a 5xx's error type and frames), to show when a test fails."""
        return [
            line
            for port in self.ports
            for line in (self.tmp / f"replica-{port}.log").read_text().splitlines()
            if '"message": "failed"' in line
        ]

    def stop(self) -> None:
        self.nginx.terminate()
        self.nginx.wait(timeout=10)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=40)


def race(url: str, token: str, clients: int, query: Callable[[int], dict]) -> list[int]:
    """``clients`` POSTs of ``query(i)`` to ``url`` released at one moment; their statuses."""
    statuses: list[int] = []
    barrier = threading.Barrier(clients)

    def fire(i: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
            barrier.wait()
            statuses.append(c.post("/v1/query", json=query(i)).status_code)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def assert_spent_exactly(store: str, user: str, released: int, refused: int, spent: Fraction) -> None:
    """The audit log verifies and runs 1..N; ``user``'s queries were ``released`` and ``refused``
    that many times; the committed spend is exactly ``spent``, and nothing is left reserved."""
    from safestats.audit.log import AuditLog
    from safestats.store.schema import spend_table

    log = AuditLog.open(store)
    assert log.verify().ok
    seqs = [r["seq"] for r in log.records()]
    assert seqs == list(range(1, len(seqs) + 1))  # one sequence: none lost, none duplicated
    mine = [r for r in log.records() if r["user"] == user and r["operation"] == "query"]
    assert sorted(r["outcome"] for r in mine) == ["refused"] * refused + ["released"] * released
    with log.engine.connect() as conn:
        spends = [x for x in conn.execute(spend_table.select()).mappings() if x["user"] == user]
    assert sum(Fraction(x["amount"]) for x in spends if x["status"] == "committed") == spent
    assert not [x for x in spends if x["status"] == "reserved"]
