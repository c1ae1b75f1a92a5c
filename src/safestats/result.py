"""What an analyst gets back: a protected, labelled pandas DataFrame.

A :class:`ProtectedResult` is a DataFrame of released values (``<NA>`` where a cell is
withheld) that also carries its protective marking, the symbol of every withheld cell, the
audit record id and the query as run. In Jupyter it renders with the marking as a banner and
a one-line provenance footer; ``to_csv`` and ``to_html`` write the marking into the file.
The marking travels with the frame through pandas operations (``_metadata``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from safestats.errors import ExportError
from safestats.marking import colour
from safestats.provenance import Provenance, show_amount

__all__ = ["ProtectedResult", "Provenance", "result_from_payload", "show_amount"]


class ProtectedResult(pd.DataFrame):
    """A DataFrame of released aggregates with its marking and provenance."""

    _metadata = ["_provenance", "_session"]
    _provenance: Provenance | None
    _session: Any = None

    @property
    def _constructor(self) -> type[ProtectedResult]:
        return ProtectedResult

    # -- what an analyst reads -------------------------------------------------------------
    @property
    def provenance(self) -> Provenance:
        if getattr(self, "_provenance", None) is None:
            raise AttributeError("this frame has lost its provenance")
        assert self._provenance is not None
        return self._provenance

    @property
    def label(self) -> str:
        return self.provenance.label

    @property
    def marking(self) -> str:
        return self.provenance.marking

    @property
    def audit_id(self) -> int:
        return self.provenance.audit_id

    @property
    def query(self) -> Mapping[str, Any]:
        return self.provenance.query

    def save_release(
        self,
        name: str,
        *,
        path: str | Path | None = None,
        notebook: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        password: str | None = None,
        unencrypted: bool = False,
    ) -> Path:
        """Save this result as a named release and write its bundle (default ``<output_dir>/releases/<name>``):
        the table as CSV and Parquet with its marking, the manifest (query, snapshot and input
        checksums, versions, disclosure and spend, audit record, notebook and parameters) and the
        checksums of every file. Returns the bundle's folder — for an OFFICIAL-SENSITIVE result,
        the protected archive of it (``<name>.zip``, as :meth:`to_csv`), unless ``unencrypted``."""
        session = getattr(self, "_session", None)
        if session is None:
            from safestats.errors import ReleaseError

            raise ReleaseError("save_release works on a result as returned by run() or sql() in this session")
        return session.save_release(
            self.audit_id,
            name,
            path=path,
            notebook=notebook,
            parameters=dict(parameters) if parameters is not None else None,
            password=password,
            unencrypted=unencrypted,
        )

    @property
    def symbols(self) -> pd.DataFrame:
        """The GSS symbol of each withheld cell ('' where the value is released)."""
        p = self.provenance
        cols = [c for c in p.symbols if c in self.columns]
        out = pd.DataFrame("", index=self.index, columns=cols)
        for c in cols:
            for row, sym in p.symbols[c].items():
                if row in out.index:
                    out.loc[row, c] = sym
        return out

    @property
    def reasons(self) -> pd.DataFrame:
        """sdc: why each withheld cell is withheld ('' where released): threshold,
        nk_dominance, p_percent, quantile, secondary or linked (docs/disclosure.md)."""
        p = self.provenance
        cols = [c for c in p.symbols if c in self.columns]
        out = pd.DataFrame("", index=self.index, columns=cols)
        for c in cols:
            for row, why in (p.reasons.get(c) or {}).items():
                if row in out.index:
                    out.loc[row, c] = why
        return out

    @property
    def suppressed(self) -> int:
        return self.provenance.suppressed

    @property
    def accuracy(self) -> pd.DataFrame | None:
        """dp mode: the 95% interval half-width of each released cell (None in sdc mode)."""
        acc = self.provenance.accuracy
        if acc is None:
            return None
        full = pd.DataFrame({c: pd.array(v, dtype="Float64") for c, v in acc.items()})
        return full.loc[[i for i in self.index if i in full.index]]

    def interval(self, statistic: str | None = None) -> pd.DataFrame | None:
        """dp mode: the ends of each released cell's 95% interval for ``statistic`` (the only one
        if there is one), as columns ``lower`` and ``upper``; None in sdc mode.

        Far from the threshold it is ``value ± accuracy``. A count near the threshold is shown
        only because its noisy value cleared it, so its interval is the one conditional on that,
        and is not centred on the value (``accuracy`` is then its symmetric envelope, which
        covers more often than 95%). Withheld cells have no interval."""
        ends = self.provenance.interval
        acc = self.accuracy
        if ends is None and acc is None:
            return None
        stats = [c for c in (ends if ends is not None else acc.columns) if c in self.columns]  # type: ignore[union-attr]
        statistic = statistic or (stats[0] if len(stats) == 1 else None)
        if statistic not in stats:
            raise ValueError(f"interval() needs a statistic: one of {', '.join(stats)}")
        if ends is None:  # a release from before intervals were stored: symmetric about the value
            assert acc is not None
            value = pd.to_numeric(self[statistic], errors="coerce").astype("Float64")
            return pd.DataFrame({"lower": value - acc[statistic], "upper": value + acc[statistic]}, index=self.index)
        e = ends[statistic]
        full = pd.DataFrame(
            {"lower": pd.array(e["lower"], dtype="Float64"), "upper": pd.array(e["upper"], dtype="Float64")}
        )
        return full.loc[[i for i in self.index if i in full.index]]

    @property
    def privacy(self) -> Mapping[str, Any] | None:
        """dp mode: the mechanism, its parameters, the loss spent and the budget left."""
        return self.provenance.privacy

    def display_frame(self) -> pd.DataFrame:
        """A plain DataFrame for showing: withheld cells as their symbol (e.g. ``c``)."""
        out = pd.DataFrame(self).astype(object)
        values = [c for c in self.provenance.symbols]
        for c in out.columns:
            if c not in values:  # a key column: its empty value is a category of its own
                out[c] = out[c].where(out[c].notna(), "(empty)")
        acc = self.accuracy
        if acc is not None:
            for c in acc.columns:
                if c in out:
                    ends = self.interval(c) if self.provenance.interval and c in self.provenance.interval else None
                    lows = ends["lower"] if ends is not None else [None] * len(out)
                    highs = ends["upper"] if ends is not None else [None] * len(out)
                    shown = [_with_pm(v, a, lo, hi) for v, a, lo, hi in zip(out[c], acc[c], lows, highs, strict=True)]
                    out[c] = pd.Series(shown, index=out.index, dtype=object)  # stays text-able (c, x)
        sym = self.symbols
        for c in sym.columns:
            mask = sym[c] != ""
            out.loc[mask, c] = sym.loc[mask, c]
        return out

    # -- output checking (sdc), as before ACRO's finalise ------------------------------------------
    def comment(self, text: str) -> dict[str, Any]:
        """Add a comment for the output checker to this output's record (audited)."""
        return self._note(comment=text)

    def request_exception(self, reason: str) -> dict[str, Any]:
        """Ask the output checker for an exception for this output, saying why (audited)."""
        return self._note(exception=reason)

    def _note(self, **note: str) -> dict[str, Any]:
        session = getattr(self, "_session", None)
        if session is None:
            from safestats.errors import ReleaseError

            raise ReleaseError("comments go on a result as returned by run() or sql() in this session")
        return dict(session.note_output(self.audit_id, **note))

    # -- derived frames that keep the marking (derived.py) ----------------------------------------
    def pivot(self, *, index: str | Sequence[str], columns: str, values: str | None = None) -> ProtectedResult:
        """A wide table of one statistic, marked: each cell keeps its symbol, reason and interval
        (:func:`safestats.derived.pivot`)."""
        from safestats import derived

        return derived.pivot(self, index=index, columns=columns, values=values)

    def crosstab(self, index: str | Sequence[str], columns: str, values: str | None = None) -> ProtectedResult:
        """The same as :meth:`pivot` (a cross-tabulation of one statistic), marked."""
        return self.pivot(index=index, columns=columns, values=values)

    def assign(self, **columns: Any) -> ProtectedResult:
        """pandas' ``assign``, marked: a new column from a withheld cell is withheld
        (:func:`safestats.derived.assign`)."""
        from safestats import derived

        return derived.assign(self, columns)

    def sum_over(self, by: str | Sequence[str], values: str | Sequence[str] | None = None) -> ProtectedResult:
        """Sums per ``by``; a group with a withheld cell is withheld (:func:`safestats.derived.sum_over`)."""
        from safestats import derived

        return derived.sum_over(self, by, values)

    def groupby(self, *args: Any, **kwargs: Any) -> Any:
        """pandas' ``groupby``, with a warning: aggregating a protected result by hand treats a
        withheld cell as missing (a sum of the shown cells only) and drops the marking."""
        from safestats.derived import warn_once

        warn_once(
            "groupby",
            "groupby on a protected result treats withheld cells as missing and drops the marking; "
            "use r.sum_over(...) (a group with a withheld cell is withheld) or r.pivot(...)",
        )
        return pd.DataFrame(self).groupby(*args, **kwargs)

    def merge(self, right: Any, *args: Any, **kwargs: Any) -> Any:
        """Another released result joined on keys, marked (:func:`safestats.derived.merge`:
        ``on=``, ``how=``, ``rename=``). With anything else it is pandas' ``merge``, with a
        warning that the result drops the marking."""
        from safestats import derived

        if isinstance(right, ProtectedResult) and not args and set(kwargs) <= {"on", "how", "rename"}:
            return derived.merge(self, right, **kwargs)
        derived.warn_once(
            "merge",
            "merge with a plain DataFrame (or pandas' own options) drops the marking and shows withheld "
            "cells as missing; merge two released results with r.merge(other, on=..., how=..., rename=...)",
        )
        return pd.DataFrame(self).merge(right, *args, **kwargs)

    def pivot_table(self, *args: Any, **kwargs: Any) -> Any:
        """pandas' ``pivot_table``, with a warning: use :meth:`pivot` or :meth:`sum_over`, marked."""
        from safestats.derived import warn_once

        warn_once(
            "pivot_table",
            "pivot_table on a protected result drops the marking and treats withheld cells as missing; "
            "use r.pivot(...) or r.sum_over(...)",
        )
        return pd.DataFrame(self).pivot_table(*args, **kwargs)

    # -- rendering and export --------------------------------------------------------------
    def _repr_html_(self) -> str:
        p = self.provenance
        banner_colour = colour(p.label)
        banner = (
            f'<div class="safestats-marking" title="{html.escape(p.caveat)}" style="background:{banner_colour};'
            f'color:white;font-weight:bold;padding:4px 8px;letter-spacing:0.05em">{html.escape(p.marking)}</div>'
        )
        handling = (
            f'<div class="safestats-handling" style="font-size:smaller;color:{banner_colour};padding:2px 8px">'
            f"{html.escape(p.caveat)}</div>"
        )
        table = self.display_frame().to_html(na_rep="", max_rows=60)
        footer = (
            f'<div class="safestats-provenance" style="font-size:smaller;color:#505a5f;'
            f'padding:2px 8px">{html.escape(p.footer())}</div>'
        )
        return f'<div class="safestats-result">{banner}{handling}{table}{footer}{banner}</div>'

    def __repr__(self) -> str:
        if getattr(self, "_provenance", None) is None:
            return super().__repr__()
        p = self.provenance
        body = self.display_frame().to_string(na_rep="")
        return f"[{p.marking}] {p.caveat}\n{body}\n{p.footer()}\n[{p.marking}]"

    def to_csv(
        self,
        path_or_buf: Any = None,
        *,
        password: str | None = None,
        unencrypted: bool = False,
        **kwargs: Any,
    ) -> str | None:
        """CSV with the marking on the first and last lines and symbols for withheld cells.

        Written to a file, an OFFICIAL-SENSITIVE result is a protected archive (``<name>.zip``,
        AES-256, with ``password`` or ``SAFESTATS_EXPORT_PASSWORD``; or ``.zip.age`` to the
        policy's recipients) unless ``unencrypted=True``, which is audited."""
        p = self.provenance
        kwargs.setdefault("index", False)
        body = self.display_frame().to_csv(**kwargs)
        text = f"# {p.marking}\n# Handling: {p.caveat}\n# {p.footer()}\n{body}# {p.marking}\n"
        return self._export(text, path_or_buf, password=password, unencrypted=unencrypted)

    def to_html(
        self,
        buf: Any = None,
        *,
        password: str | None = None,
        unencrypted: bool = False,
        **kwargs: Any,
    ) -> str | None:
        """The notebook rendering (marking banners, table with symbols, provenance) as HTML;
        protected like :meth:`to_csv` when written to a file."""
        return self._export(self._repr_html_(), buf, password=password, unencrypted=unencrypted)

    def to_parquet(
        self,
        path: Any = None,
        *,
        password: str | None = None,
        unencrypted: bool = False,
        **kwargs: Any,
    ) -> bytes | None:
        """Typed columns (each statistic as numbers, its symbol in ``<stat>_symbol``, in dp its
        95% half-width in ``<stat>_ci95`` and its interval's ends in ``<stat>_lower95`` and
        ``<stat>_upper95``) with the marking and caveat in the file's metadata; protected like
        :meth:`to_csv` when written to a file."""
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        from safestats.releases import typed_frame

        p = self.provenance
        table = pa.Table.from_pandas(typed_frame(self), preserve_index=False)
        meta = {
            b"safestats.marking": p.marking.encode(),
            b"safestats.handling": p.caveat.encode(),
        }
        buf = io.BytesIO()
        pq.write_table(
            table.replace_schema_metadata({**(table.schema.metadata or {}), **meta}),
            buf,
            **kwargs,
        )
        data = buf.getvalue()
        if path is None:
            return data
        self._export_bytes(data, path, password=password, unencrypted=unencrypted)
        return None

    def _export(self, text: str, target: Any, *, password: str | None, unencrypted: bool) -> str | None:
        """``text`` returned (no target), or written: in clear when the result needs no
        protection, else as a protected archive, or in clear when asked — each file written of
        a protected result is recorded in the audit log first (no record, no file)."""
        p = self.provenance
        if target is None or not p.needs_protection:
            return _write(text, target)
        if not isinstance(target, str | Path):
            if not unencrypted:
                raise ExportError(
                    f"a {p.label} result is written to a file by name (then it is encrypted); to write it "
                    "to an open file in clear, pass unencrypted=True (audited)"
                )
            self._record_export(getattr(target, "name", "an open file"), "none")
            return _write(text, target)
        self._export_bytes(text.encode(), target, password=password, unencrypted=unencrypted)
        return None

    def _export_bytes(self, data: bytes, target: Any, *, password: str | None, unencrypted: bool) -> None:
        """``data`` written to the file ``target``: protected when the result needs it."""
        from safestats.exports import (
            ExportPolicy,
            protected_name,
            resolve_password,
            write_protected,
        )

        p = self.provenance
        if not isinstance(target, str | Path):
            raise ExportError("write a result to a file by name (an open file is not supported here)")
        path = Path(target)
        if not p.needs_protection or unencrypted:
            if p.needs_protection:
                self._record_export(str(path), "none")
            path.write_bytes(data)
            return
        policy = ExportPolicy.from_meta(p.export)
        secret = resolve_password(password) if policy.method == "zip" else None  # before the record
        self._record_export(str(protected_name(path, policy)), policy.method)
        write_protected(
            path,
            {path.name: data},
            marking=p.marking,
            caveat=p.caveat,
            policy=policy,
            password=secret,
        )
        return

    def _guarded_writer(name: str) -> Any:
        """A pandas writer that a protected result may not use to reach a file in clear."""

        def writer(self: ProtectedResult, *args: Any, unencrypted: bool = False, **kwargs: Any) -> Any:
            p = getattr(self, "_provenance", None)
            target = args[0] if args else next((kwargs[k] for k in _TARGETS if k in kwargs), None)
            if p is not None and p.needs_protection and target is not None:
                if not unencrypted:
                    raise ExportError(
                        f"{name}() would write this {p.label} result in clear: use to_csv, to_html or to_parquet "
                        "(they write a protected archive), or pass unencrypted=True (audited)"
                    )
                self._record_export(str(getattr(target, "name", target)), "none")
            return getattr(pd.DataFrame, name)(self, *args, **kwargs)

        writer.__name__ = name
        writer.__doc__ = f"pandas' {name}; refused for a protected result's file unless unencrypted=True."
        return writer

    for _name in (
        "to_excel",
        "to_json",
        "to_pickle",
        "to_feather",
        "to_stata",
        "to_hdf",
        "to_xml",
        "to_orc",
        "to_latex",
        "to_markdown",
    ):
        locals()[_name] = _guarded_writer(_name)
    del _name

    def _record_export(self, file: str, protection: str) -> None:
        session = getattr(self, "_session", None)
        if session is None:
            raise ExportError(
                "this result has no session to record the export in; write it from the result run() returned"
            )
        session.record_export(self.audit_id, file, protection)


#: the keyword a pandas writer takes its file by
_TARGETS = ("path", "path_or_buf", "buf", "excel_writer", "fname")


def _write(text: str, target: Any) -> str | None:
    """Return ``text`` (no target), or write it to a path or an open file."""
    if target is None:
        return text
    if isinstance(target, str | Path):
        Path(target).write_text(text)
    else:
        target.write(text)
    return None


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or bool(pd.isna(v))


def _with_pm(value: Any, half: Any, low: Any = None, high: Any = None) -> Any:
    """``v ± a`` for an interval centred on the value, ``v (lo–hi)`` for one that is not."""
    if _missing(value) or _missing(half):
        return value
    if (
        not _missing(low)
        and not _missing(high)
        and abs((float(value) - float(low)) - (float(high) - float(value))) > 1e-9
    ):
        if isinstance(value, float):
            return f"{value:.1f} ({float(low):.1f}–{float(high):.1f})"
        return f"{value} ({float(low):.0f}–{float(high):.0f})"
    if isinstance(value, float):
        return f"{value:.1f} ± {half:.1f}"
    return f"{value} ± {half:.0f}"


def result_from_payload(payload: Mapping[str, Any]) -> ProtectedResult:
    """Build a result from the service's wire payload (the only thing a client receives)."""
    table = payload["table"]
    frame = pd.DataFrame(
        {c: pd.Series(table["data"][c], dtype=object) for c in table["columns"]},
        columns=table["columns"],
    )
    for name, dtype in payload["dtypes"].items():
        if name in frame:
            frame[name] = frame[name].astype(dtype)
    meta = dict(payload["meta"])
    meta["symbols"] = {c: {int(r): s for r, s in rows.items()} for c, rows in meta.get("symbols", {}).items()}
    meta["reasons"] = {c: {int(r): s for r, s in rows.items()} for c, rows in (meta.get("reasons") or {}).items()}
    result = ProtectedResult(frame)
    result._provenance = Provenance(**meta)
    return result
