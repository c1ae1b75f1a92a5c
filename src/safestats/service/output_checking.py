"""Output-checking records in ACRO's ``results.json`` layout, for review in the SACRO viewer.

Every sdc release adds an output to the requesting user's folder for the day
(``<output_checking_dir>/<user>/<YYYY-MM-DD>/``), the way an ACRO session does:

- ``results.json``: ``{"version", "tool", "results": {uid: {...}}}`` where each output has
  ``uid``, ``status`` (``pass``: no cell needed protecting; ``review``: cells were suppressed
  or perturbed — the output checker looks, as ACRO marks mitigated tables), ``type`` (``table``),
  ``properties`` (method, mitigation, round_base, and the safestats provenance: query hash,
  snapshot, label), ``files`` (``[{name, sdc: {summary: {check: count}, cells: {check: [[row,
  col], …]}}}]``), ``outcome`` (per cell: ``ok`` or the checks that withheld it), ``command``
  (the canonical query or the SQL), ``summary``, ``timestamp``, ``comments`` and ``exception``;
- one CSV per output, the released table with GSS symbols in withheld cells;
- ``checksums/<file>.txt``: the SHA-256 of every file.

The record is written before the release is audited (fail closed: no record, no release) and
the audit record names it. Written under the user's sdc lock, so outputs do not race.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from safestats.__about__ import __version__
from safestats.disclosure.rules import ACRO_NAMES

__all__ = ["ACRO_VERSION", "annotate_output", "write_output_record"]

#: The ACRO version whose results.json layout the records follow, written as their ``version``:
#: the SACRO viewer (0.2) opens 0.4.x. ACRO 1.0's own loader (acro.record.load_records) accepts
#: only its exact version: set ``acro_version`` (docs/configuration.md) to read them with it.
ACRO_VERSION = "0.4.5"

#: ACRO's check names (the viewer shows these), then safestats' own.
CHECKS = (
    "negative",
    "missing",
    "threshold",
    "p-ratio",
    "nk-rule",
    "all-values-are-same",
    "quantile",
    "secondary",
    "linked",
)


def write_output_record(
    folder: Path,
    *,
    user: str,
    protected: Any,
    query: dict[str, Any],
    command: str,
    disclosure: dict[str, Any],
    provenance: dict[str, Any],
    acro_version: str = ACRO_VERSION,
) -> str:
    """Add one output to ``folder/user/<today>/results.json``; returns ``<folder>#<uid>``.
    A day's folder holds at most :data:`PER_FOLDER` outputs; then ``<today>-2/``, ``-3/`` …
    (each an ACRO folder of its own), so a release never rewrites more than that many."""
    now = dt.datetime.now(dt.UTC)
    where, found = _current(Path(folder) / _safe(user), now.date().isoformat())
    where.mkdir(parents=True, exist_ok=True)
    results_path = where / "results.json"
    doc: dict[str, Any] = found or {
        "version": acro_version,
        "tool": "safestats",
        "safestats_version": __version__,
        "results": {},
    }
    uid = _name(len(doc["results"]), query)
    table: pd.DataFrame = protected.table
    names = list(protected.symbols.columns)
    key_names = [c for c in table.columns if c not in names]
    shown = table.astype(object).copy()
    for name in names:
        marked = protected.symbols[name] != ""
        shown.loc[marked, name] = protected.symbols.loc[marked, name]
    csv_name = f"{uid}_0.csv"
    csv_text = shown.to_csv(index=False)
    _atomic_write(where / csv_name, csv_text)

    cells: dict[str, list[list[int]]] = {c: [] for c in CHECKS}
    found_by = np.full((len(table), len(names)), "", dtype=object)  # the checks that withheld each cell
    for rule, mask in (protected.checks or {}).items():
        check = ACRO_NAMES.get(rule, rule)
        rows, cols = np.nonzero(mask)
        cells.setdefault(check, []).extend(
            [[r, c + len(key_names)] for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
        )
        found_by[mask] += f"{check}; "
    found_by = np.where(found_by == "", "ok", found_by)
    # per statistic, per row: what pandas' to_json gives the table of outcomes (orient "columns")
    outcome = {name: {str(i): v for i, v in enumerate(found_by[:, j].tolist())} for j, name in enumerate(names)}
    summary_counts: dict[str, Any] = {c: len(v) for c, v in cells.items()}
    suppressed = bool(protected.suppressed)
    perturbed = disclosure.get("protection") == "cell_key"
    summary_counts["suppressed"] = suppressed
    notes = list(getattr(protected, "notes", ()))
    status = "review" if suppressed or perturbed or notes else "pass"
    parts = [f"{c}: {n} cells suppressed" for c, n in summary_counts.items() if c != "suppressed" and n]
    if perturbed:
        parts.append(f"every count perturbed by cell key (max noise {disclosure.get('max_noise')})")
    parts += notes
    summary = f"{status}; " + "; ".join(parts) if parts else status
    mitigation = "cell key perturbation" if perturbed else "suppression" if suppressed else ""
    if disclosure.get("rounding", 1) > 1:
        mitigation = (mitigation + ", " if mitigation else "") + "rounding"
    doc["results"][uid] = {
        "uid": uid,
        "status": status,
        "type": "table",
        "properties": {
            "method": "safestats aggregate",
            "mitigation": mitigation,
            "round_base": disclosure.get("rounding", 1),
            "disclosure": disclosure,
            "query": query,
            **provenance,
        },
        "files": [{"name": csv_name, "sdc": {"summary": summary_counts, "cells": cells}}],
        "outcome": outcome,
        "command": command,
        "summary": summary,
        "timestamp": now.isoformat(timespec="seconds"),
        "comments": [f"marking: {provenance.get('label', '')}", *notes],
        "exception": "",
        "fair": {},
    }
    text = _dump(doc)
    _atomic_write(results_path, text)
    _remember(results_path, doc)
    _checksums(where, {csv_name: csv_text, "results.json": text})
    return f"{where}#{uid}"


def _name(n: int, query: dict[str, Any]) -> str:
    """A readable output name: its number, table and keys (``003_PupilOnRoll_by_la_code_sex``)."""
    keys = [str(k) for k in query.get("group_by") or []] + [str(b[0]) + "_bins" for b in query.get("bins") or []]
    name = f"{n:03d}_{query.get('table', 'table')}" + (f"_by_{'_'.join(keys)}" if keys else "")
    return _safe(name)[:120]


def annotate_output(
    ref: str, *, comment: str | None = None, exception: str | None = None, review: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Add the analyst's comment or exception request, or the output checker's review, to the
    output ``ref`` (``<folder>#<uid>``) in its results.json; the checksums are rewritten. Returns
    the output as it now stands."""
    folder, _, uid = ref.partition("#")
    where = Path(folder)
    path = where / "results.json"
    doc = json.loads(path.read_text())
    out = doc["results"][uid]
    if comment:
        out["comments"].append(comment)
    if exception:
        out["exception"] = exception
    if review is not None:
        out["review"] = review
    text = _dump(doc)
    _atomic_write(path, text)
    _checksums(where, {"results.json": text})
    return dict(out)


#: outputs per output-checking folder: rewriting results.json (and its checksums) at every
#: release costs time in proportion to what it holds
PER_FOLDER = 100


def _current(base: Path, day: str) -> tuple[Path, dict[str, Any] | None]:
    """The day's folder with room for one more output (``day``, then ``day-2``, ``day-3`` …)
    and its results.json as it stands (None for a new folder)."""
    numbered = [int(p.name[len(day) + 1 :]) for p in base.glob(f"{day}-*") if p.name[len(day) + 1 :].isdigit()]
    n = max(numbered, default=1)
    current = base / (day if n == 1 else f"{day}-{n}")
    results = current / "results.json"
    if not results.exists():
        return current, None
    doc = _recall(results)
    if len(doc.get("results", {})) >= PER_FOLDER:
        return base / f"{day}-{n + 1}", None
    return current, doc


#: the results.json documents this process wrote last, parsed, by path: the next release to the
#: same folder reads the file again only if it changed since (another process, an annotation)
_DOCS: OrderedDict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = OrderedDict()
_DOCS_LOCK = threading.Lock()
_DOCS_KEPT = 16


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes whenever the file is replaced or rewritten: its inode (every write here is a
    rename of a new file), modification time and size."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _recall(path: Path) -> dict[str, Any]:
    """``path``'s document: the one this process wrote, taken from the memo (the caller adds to
    it, and puts it back with :func:`_remember` only once it is written), if the file is still
    what it wrote; else read from the file."""
    with _DOCS_LOCK:
        held = _DOCS.pop(path, None)
    if held is not None and held[0] == _stamp(path):
        return held[1]
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _remember(path: Path, doc: dict[str, Any]) -> None:
    with _DOCS_LOCK:
        _DOCS[path] = (_stamp(path), doc)
        _DOCS.move_to_end(path)
        while len(_DOCS) > _DOCS_KEPT:
            _DOCS.popitem(last=False)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) or "_"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _dump(doc: dict[str, Any]) -> str:
    """results.json as one line of JSON: indenting would take Python's slow encoder, and a
    release rewrites the file (the SACRO viewer and ACRO's loader read either)."""
    return json.dumps(doc, default=str, separators=(",", ":"))


def _checksums(where: Path, changed: dict[str, str]) -> None:
    """``checksums/<file>.txt``: the SHA-256 of each file that changed (the others' stand), from
    the text just written to it."""
    sums = where / "checksums"
    sums.mkdir(exist_ok=True)
    for name, text in changed.items():
        _atomic_write(sums / f"{name}.txt", hashlib.sha256(text.encode()).hexdigest())
