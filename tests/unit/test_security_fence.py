"""docs/security.md is the safety fence: it names every module that carries a safety rule and
the tests that pin it. This keeps it true: every module it names exists, every test file and
test it names exists, and no module of the rooms that carry the rules is left out of it."""

from __future__ import annotations

import re

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "security.md").read_text()
SRC = ROOT / "src" / "safestats"

#: the rooms whose every module carries a rule, and the modules elsewhere that do
ROOMS = ("disclosure", "privacy", "store", "audit")
ALSO = (
    "service/pipeline.py",
    "service/recorder.py",
    "service/preview.py",
    "service/app.py",
    "service/releases.py",
    "service/metadata.py",
    "service/output_checking.py",
    "query/validate.py",
    "query/model.py",
    "query/sql.py",
    "query/wire.py",
    "engines/compile.py",
    "engines/memory.py",
    "engines/duckdb.py",
    "engines/spark.py",
    "access/policy.py",
    "labels.py",
    "marking.py",
    "releases.py",
    "result.py",
    "client/transport.py",
)


def test_every_module_named_exists():
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)", DOC))
    source = {n for n in named if not n.startswith("tests/")}
    assert source and all((SRC / n).exists() for n in source), sorted(n for n in source if not (SRC / n).exists())


def test_every_test_named_exists():
    files = set(re.findall(r"`(tests/[a-z_/]+\.py)", DOC))
    assert files and all((ROOT / f).exists() for f in files), sorted(f for f in files if not (ROOT / f).exists())
    # `tests/x.py::test_a`, then `::test_b` on the same file until the next file is named
    current, missing = None, []
    for m in re.finditer(r"`(tests/[a-z_/]+\.py)?(?:::(test_[A-Za-z0-9_]+))?", DOC):
        path, test = m.group(1), m.group(2)
        if path:
            current = path
        if test and current and f"def {test}(" not in (ROOT / current).read_text():
            missing.append(f"{current}::{test}")
    assert not missing, missing


def test_no_module_that_carries_a_rule_is_left_out():
    modules = {str(p.relative_to(SRC)) for room in ROOMS for p in (SRC / room).glob("*.py") if p.name != "__init__.py"}
    modules |= set(ALSO)
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)", DOC))
    assert not sorted(modules - named), f"not in docs/security.md: {sorted(modules - named)}"
