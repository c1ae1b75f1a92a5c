"""Every example in the README and docs/ runs."""

from __future__ import annotations

import re
import shlex
import shutil

import pytest

from safestats.cli import main
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(lang: str):
    for doc in DOCS:
        for i, block in enumerate(re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), re.S)):
            yield pytest.param(block, id=f"{doc.name}-{lang}-{i}")


@pytest.fixture
def sandbox(tmp_path, sample_dir, monkeypatch):
    data = tmp_path / "synthetic" / "sample"
    shutil.copytree(sample_dir, data)
    env = {
        "SAFESTATS_DATA_DIR": str(data),
        "SAFESTATS_STORE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "SAFESTATS_OUTPUT_CHECKING_DIR": str(tmp_path / "output-checking"),
        "SAFESTATS_OUTPUT_DIR": str(tmp_path / "outputs"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # files the examples write (release bundles, CSVs) land here
    return env


@pytest.mark.parametrize("block", list(_blocks("python")))
def test_python_examples_run(block, sandbox):
    if block.startswith("# deployment example"):
        pytest.skip("needs a running service; tests/functional/test_http.py covers the client")
    exec(compile(block, "<doc example>", "exec"), {})


@pytest.mark.parametrize("block", list(_blocks("sh")))
def test_shell_examples_run(block, sandbox):
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        if not line.startswith("safestats "):
            continue  # make targets are exercised by CI itself
        if line.startswith("safestats reports run"):
            continue  # the quality reports run in tests/functional/test_notebooks.py (the slowest tests)
        args = shlex.split(line)[1:]
        assert main(args, environ=sandbox) == 0, line
