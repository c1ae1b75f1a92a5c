"""The deployment boundary, with real operating-system users (docs/deployment.md).

The service runs as its own user and alone can read the census, the store and its keys; an
analyst's JupyterLab runs as another user, with only the service's URL and a token in its
environment, and the test drives a kernel through it (REST API and websocket, as the browser). From that kernel the attacker — an analyst who has read our docs and knows every
path — tries the Parquet files, the SQLite store, the key, embedded mode over the real census,
and the service's process under /proc; each is refused by the operating system or by
safestats, while the same kernel's queries through the service are answered and audited.

Needs root (to make the users; CI runs as root). The software must be runnable by every user,
as an installed package is: where this checkout's interpreter or venv lives under a private
folder (pyenv under /root, a clone in a 0700 temporary folder), the test hard-links them into a
folder everyone can read, and builds a venv of its own over the same packages.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

from safestats.audit.log import AuditLog

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("useradd", "userdel", "runuser")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create the service's and the analyst's users"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, **kw)


def _as(user: str, env: dict[str, str], *cmd: str) -> list[str]:
    """``cmd`` as ``user`` with exactly ``env`` (nothing of ours leaks through)."""
    return ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]


def _can_read(user: str, path: Path) -> bool:
    return _run("runuser", "-u", user, "--", "test", "-r", str(path)).returncode == 0


def _link_copy(source: Path, target: Path) -> None:
    """``source`` at ``target`` by hard links (same file system: seconds), else a copy."""
    try:
        subprocess.run(["cp", "-al", str(source), str(target)], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deployment(sample_dir):
    """Two users, a venv every user can run, and the service's private folder."""
    tag = secrets.token_hex(3)
    svc, analyst, reports = f"ss-svc-{tag}", f"ss-ana-{tag}", f"ss-rep-{tag}"
    root = Path(tempfile.mkdtemp(prefix="safestats-deploy-"))
    root.chmod(0o755)
    try:
        for user in (svc, analyst, reports):
            home = root / "home" / user
            subprocess.run(
                ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/false", user], check=True
            )
            home.mkdir(parents=True)
            shutil.chown(home, user, user)
            home.chmod(0o700)
        # the software, installed where everyone can read it (as a package would be)
        interpreter, library = Path(sys.executable).resolve(), {}
        if _run("runuser", "-u", analyst, "--", "test", "-x", str(interpreter)).returncode != 0:
            _link_copy(Path(sys.base_prefix), root / "python")  # e.g. pyenv's build under /root
            interpreter = root / "python" / interpreter.relative_to(Path(sys.base_prefix))
            library = {"LD_LIBRARY_PATH": str(root / "python" / "lib")}  # its RUNPATH names the old place
        venv = root / "venv"
        subprocess.run(
            [str(interpreter), "-m", "venv", "--without-pip", str(venv)], check=True, env=os.environ | library
        )
        site = next((venv / "lib").glob("python3.*")) / "site-packages"
        installed = Path(next(p for p in sys.path if p.endswith("site-packages") and Path(p, "duckdb").exists()))
        if not _can_read(analyst, installed / "duckdb" / "__init__.py"):  # a private checkout
            _link_copy(installed, root / "site-packages")
            installed = root / "site-packages"
        _link_copy(Path(sys.prefix) / "share" / "jupyter", venv / "share" / "jupyter")  # nbconvert's templates
        shutil.rmtree(venv / "share" / "jupyter" / "kernels", ignore_errors=True)  # they name our interpreter
        shutil.copytree(ROOT / "src" / "safestats", root / "lib" / "safestats")  # this checkout's code
        shutil.copytree(ROOT / "notebooks", root / "notebooks")  # and its reports (beside lib/, as installed)
        (site / "safestats-deploy.pth").write_text(
            f"import sys; sys.path.insert(0, {str(root / 'lib')!r})\nimport site; site.addsitedir({str(installed)!r})\n"
        )
        for folder in (root / "lib", root / "notebooks", root / "venv"):
            subprocess.run(["chmod", "-R", "a+rX", str(folder)], check=True)
        python = venv / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
            check=True,
            capture_output=True,
            env=os.environ | library,
        )  # the kernel reports start
        base = {"PATH": "/usr/bin:/bin", **library}
        # the service's own folder: census (as real data: not synthetic), store and keys
        srv = root / "srv"
        census = srv / "census"
        shutil.copytree(sample_dir, census)
        manifest = json.loads((census / "manifest.json").read_text())
        manifest["synthetic"] = False
        (census / "manifest.json").write_text(json.dumps(manifest))
        subprocess.run(["chown", "-R", f"{svc}:{svc}", str(srv)], check=True)
        srv.chmod(0o700)
        env = {
            **base,
            "HOME": str(root / "home" / svc),
            "SAFESTATS_DATA_DIR": str(census),
            "SAFESTATS_STORE_URL": f"sqlite:///{srv / 'store.db'}",
            "SAFESTATS_SECRET_KEY_FILE": str(srv / "keys" / "secret.key"),
            "SAFESTATS_SIGNING_KEY_FILE": str(srv / "keys" / "signing.key"),
            "SAFESTATS_OUTPUT_CHECKING_DIR": str(srv / "outputs"),
        }
        yield {
            "root": root,
            "base": base,
            "svc": svc,
            "analyst": analyst,
            "reports": reports,
            "python": python,
            "env": env,
            "census": census,
            "srv": srv,
        }
    finally:
        for user in (svc, analyst, reports):
            subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True)
            subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _serve(d, port: int) -> subprocess.Popen:
    cmd = _as(d["svc"], d["env"], str(d["python"]), "-m", "safestats.cli", "serve", "--port", str(port))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=d["root"])
    for _ in range(400):
        if proc.poll() is not None:
            return proc
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/ready", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the service did not become ready")


ATTACKS = textwrap.dedent(
    """
    import json, os, sqlite3
    from pathlib import Path
    CENSUS, SRV, PID = Path({census!r}), Path({srv!r}), {pid}
    out = {{}}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "OPENED"
        except Exception as e:
            out[name] = type(e).__name__ + ": " + str(e)[:160]
    attempt("parquet", lambda: open(CENSUS / "PupilOnRoll.parquet", "rb").read(4))
    attempt("census folder", lambda: os.listdir(CENSUS))
    attempt("manifest", lambda: open(CENSUS / "manifest.json").read())
    attempt("store", lambda: sqlite3.connect(f"file:{{SRV / 'store.db'}}?mode=ro", uri=True).execute("select 1 from audit_log").fetchall())
    attempt("secret key", lambda: open(SRV / "keys" / "secret.key").read())
    attempt("signing key", lambda: open(SRV / "keys" / "signing.key").read())
    attempt("proc environ", lambda: open(f"/proc/{{PID}}/environ", "rb").read())
    attempt("proc mem", lambda: open(f"/proc/{{PID}}/mem", "rb").read(1))
    attempt("proc fds", lambda: os.listdir(f"/proc/{{PID}}/fd"))
    attempt("proc maps", lambda: open(f"/proc/{{PID}}/maps").read())
    import safestats as ss
    def embedded():  # ss.connect() with no URL: the service in this process, over the real census
        ss.connect(environ={{}}, data_dir=str(CENSUS)).table("PupilOnRoll").group_by("phase").count().run()
    attempt("embedded", embedded)
    out["cmdline"] = open(f"/proc/{{PID}}/cmdline", "rb").read().decode(errors="replace")
    out["environment"] = sorted(k for k in os.environ if k.startswith("SAFESTATS_"))
    print("ATTACKS " + json.dumps(out))
    """
)

THROUGH_THE_SERVICE = textwrap.dedent(
    """
    import safestats as ss
    s = ss.connect()
    r = s.table("PupilOnRoll").group_by("phase").count().run()
    print("ANSWER " + s.user + " " + str(len(r)) + " " + r.label + " " + str(r.audit_id))
    """
)


def test_an_analysts_kernel_reaches_the_data_only_through_the_service(deployment):
    import websocket

    d = deployment
    port = _free_port()
    # the service will not start while others can read the real census
    for path in [d["census"], *d["census"].iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    refused = _serve(d, port)
    assert refused.wait(timeout=60) != 0
    assert "will not start while others can read" in refused.stderr.read()
    refused.stderr.close()
    d["census"].chmod(0o700)
    for path in d["census"].iterdir():
        path.chmod(0o600)

    token = _run(
        *_as(
            d["svc"],
            d["env"],
            str(d["python"]),
            "-m",
            "safestats.cli",
            "users",
            "add",
            "ana",
            "--group",
            "I_STORE_SC_USERS",
            "--org",
            "DfE",
        ),
        check=True,
        cwd=d["root"],
    ).stdout.strip()
    service = _serve(d, port)
    assert service.poll() is None, service.stderr.read()
    pid = int(_run("pgrep", "-u", d["svc"], "-f", "safestats.cli serve").stdout.split()[0])
    home = d["root"] / "home" / d["analyst"]
    kernel = None
    try:
        lab_port, lab_token = _free_port(), secrets.token_hex(16)
        lab_env = {  # what the analyst's JupyterLab (and so each of its kernels) holds of safestats
            **d["base"],
            "HOME": str(home),
            "SAFESTATS_URL": f"http://127.0.0.1:{port}",
            "SAFESTATS_TOKEN": token,
        }
        kernel = subprocess.Popen(
            _as(
                d["analyst"],
                lab_env,
                str(d["python"]),
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={lab_port}",
                f"--IdentityProvider.token={lab_token}",
                f"--ServerApp.root_dir={home}",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=home,
        )
        lab = f"http://127.0.0.1:{lab_port}"
        auth = {"Authorization": f"token {lab_token}"}
        for _ in range(600):
            try:
                if httpx.get(f"{lab}/api/status", headers=auth, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        started = httpx.post(f"{lab}/api/kernels", headers=auth, json={"name": "python3"}, timeout=60)
        assert started.status_code == 201, started.text
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{lab_port}/api/kernels/{started.json()['id']}/channels?token={lab_token}", timeout=120
        )

        def run(code: str) -> str:
            """Execute ``code`` in the analyst's kernel through JupyterLab, as the browser would."""
            msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
            header = {
                "msg_id": msg_id,
                "username": "analyst",
                "session": session,
                "msg_type": "execute_request",
                "version": "5.3",
                "date": "",
            }
            content = {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            }
            ws.send(
                json.dumps(
                    {
                        "header": header,
                        "parent_header": {},
                        "metadata": {},
                        "content": content,
                        "channel": "shell",
                        "buffers": [],
                    }
                )
            )
            printed: list[str] = []
            while True:
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id or msg.get("channel") != "iopub":
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    printed.append(msg["content"]["text"])
                elif kind == "error":
                    printed.append("ERROR " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(printed)

        whoami = run("import os, pwd; print('USER', pwd.getpwuid(os.geteuid()).pw_name)")
        assert f"USER {d['analyst']}" in whoami
        text = run(ATTACKS.format(census=str(d["census"]), srv=str(d["srv"]), pid=pid))
        found = json.loads(text.split("ATTACKS ", 1)[1])
        for name in (
            "parquet",
            "census folder",
            "manifest",
            "secret key",
            "signing key",
            "proc environ",
            "proc mem",
            "proc fds",
            "proc maps",
        ):
            assert found[name].startswith("PermissionError"), (name, found[name])
        assert found["store"].startswith("OperationalError"), found["store"]  # sqlite: unable to open
        assert found["embedded"].startswith("DataError") and "permission denied" in found["embedded"], found

        assert found["environment"] == ["SAFESTATS_TOKEN", "SAFESTATS_URL"]
        secret = (d["srv"] / "keys" / "secret.key").read_text().strip()
        assert secret not in found["cmdline"] and token not in found["cmdline"]  # /proc/PID/cmdline is public

        answer = run(THROUGH_THE_SERVICE)
        assert answer.startswith("ANSWER ana "), answer
        assert int(answer.split()[2]) >= 3
        released_seq = int(answer.split()[-1])
    finally:
        if kernel is not None:
            subprocess.run(["pkill", "-KILL", "-u", d["analyst"]], capture_output=True)  # JupyterLab and kernel
            kernel.wait(timeout=30)
        subprocess.run(["pkill", "-TERM", "-u", d["svc"]], capture_output=True)
        service.wait(timeout=30)
        service.stderr.close()
    # the service's log has the analyst's release, and nothing the kernel tried got a record of
    # data: the OS refused those before safestats was ever asked
    log = AuditLog.open(d["env"]["SAFESTATS_STORE_URL"])
    assert log.verify().ok
    mine = [r for r in log.records() if r["user"] == "ana"]
    assert [(r["seq"], r["outcome"]) for r in mine if r["operation"] == "query"] == [(released_seq, "released")]
    assert all(r["client"]["observed"]["remote"] == "127.0.0.1" for r in mine)


def test_a_scheduled_report_runs_as_its_own_user_through_the_service(deployment):
    d = deployment
    for path in [d["census"], *d["census"].iterdir()]:
        path.chmod(0o700 if path.is_dir() else 0o600)
    bot = _run(
        *_as(
            d["svc"],
            d["env"],
            str(d["python"]),
            "-m",
            "safestats.cli",
            "users",
            "add",
            "quality.bot",
            "--group",
            "SC_QUALITY_REPORTS",
            "--org",
            "DfE",
            "--service-identity",
        ),
        check=True,
        cwd=d["root"],
    ).stdout.strip()
    port = _free_port()
    service = _serve(d, port)
    home = d["root"] / "home" / d["reports"]
    try:
        assert service.poll() is None, service.stderr.read()
        # the run is OFFICIAL-SENSITIVE (ethnicity, SEN): published as one protected archive
        env = {
            **d["base"],
            "HOME": str(home),
            "SAFESTATS_TOKEN": bot,
            "SAFESTATS_EXPORT_PASSWORD": "a deployment secret",
        }
        run = _run(
            *_as(
                d["reports"],
                env,
                str(d["python"]),
                "-m",
                "safestats.cli",
                "reports",
                "run",
                "core_quality",
                "--param",
                "user=quality.bot",
                "--service",
                f"http://127.0.0.1:{port}",
                "--out",
                str(home / "out"),
            ),
            cwd=home,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-2000:]
    finally:
        subprocess.run(["pkill", "-TERM", "-u", d["svc"]], capture_output=True)
        service.wait(timeout=30)
        service.stderr.close()
    archive = Path(run.stdout.strip().split(": ", 1)[1])
    assert archive.name == "core_quality.zip" and archive.read_bytes()[:2] == b"PK"
    assert archive.is_file() and archive.stat().st_uid == pwd.getpwnam(d["reports"]).pw_uid  # written as its user
    log = AuditLog.open(d["env"]["SAFESTATS_STORE_URL"])
    queries = [r for r in log.records() if r["operation"] == "query" and r["user"] == "quality.bot"]
    assert queries and all(r["interaction"] == "scheduled" and r["outcome"] == "released" for r in queries)
