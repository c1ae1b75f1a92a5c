"""The command line: help everywhere, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from safestats.cli import cli, main
from safestats.errors import EXIT_CODES, AccessDenied, QueryError, SafestatsError, exit_code_for


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [(), *list(_commands(cli))], ids=lambda p: " ".join(p) or "safestats")
def test_every_command_has_help(path, capsys):
    assert main([*path, "--help"], environ={}) == 0
    out = capsys.readouterr().out
    assert "Usage:" in out and len(out.splitlines()) > 3


def test_user_errors_are_one_line_without_traceback(capsys, tmp_path):
    code = main(["census", "summary", "--data-dir", str(tmp_path)], environ={})
    err = capsys.readouterr().err
    assert code == 6
    assert err.startswith("error: no census at") and err.count("\n") == 1
    assert "Traceback" not in err


def test_bad_option_values_are_one_line_errors(capsys):
    assert main(["synth", "--scale", "galactic"], environ={}) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid value for '--scale'") and "Traceback" not in err


def test_the_console_script_exits_with_the_code(tmp_path):
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "safestats"), "census", "summary", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 6 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_census_summary_and_verify(capsys, sample_dir):
    assert main(["census", "summary", "--data-dir", str(sample_dir)], environ={}) == 0
    out = capsys.readouterr().out
    assert "152 local authorities" in out and "PupilOnRoll" in out
    assert main(["census", "verify", "--data-dir", str(sample_dir)], environ={}) == 0
    assert capsys.readouterr().out.startswith("ok: 6 files match")


def test_synth_writes_a_census(tmp_path, capsys):
    out = tmp_path / "mini"
    assert main(["synth", "--pupils", "2000", "--out", str(out), "--quiet"], environ={}) == 0
    assert (out / "manifest.json").exists()
    assert main(["census", "verify", "--data-dir", str(out)], environ={}) == 0


def test_environment_settings_reach_commands(tmp_path, capsys):
    assert main(["census", "summary"], environ={"SAFESTATS_DATA_DIR": str(tmp_path)}) == 6
    assert str(tmp_path) in capsys.readouterr().err


def test_catalog_commands(capsys):
    assert main(["catalog", "validate"], environ={}) == 0
    assert "5 tables" in capsys.readouterr().out
    assert main(["catalog", "show", "Nationality"], environ={}) == 0
    out = capsys.readouterr().out
    assert "restricted" in out and "OFFICIAL-SENSITIVE" in out
    assert main(["catalog", "show", "Nope"], environ={}) == 5


def test_exit_code_map_is_most_specific_first():
    assert exit_code_for(AccessDenied("x")) == 3
    assert exit_code_for(QueryError("x")) == 4
    assert exit_code_for(SafestatsError("x")) == 1
    seen = []
    for cls, _ in EXIT_CODES:
        assert not any(issubclass(cls, earlier) for earlier in seen), f"{cls} is shadowed"
        seen.append(cls)


def test_every_error_class_says_its_exit_code_and_http_status():
    """One place: each class in errors.py carries both; nothing else maps them."""
    import safestats.errors as errors

    expected_http = {
        "AuthError": 401,
        "UnknownUser": 401,
        "AccessDenied": 403,
        "BudgetExceeded": 403,
        "DisclosureRefused": 422,
        "ReleaseError": 409,
        "QueryError": 400,
        "UserError": 400,
        "ConfigError": 400,
        "RateLimited": 429,
        "RequestTooLarge": 413,
        "AuditFailure": 503,
        "ServiceError": 500,
        "SafestatsError": 500,
    }
    classes = {n: getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)}
    for name, status in expected_http.items():
        assert errors.http_status_for(classes[name]("x")) == status, name
    for name, cls in classes.items():
        assert isinstance(cls.exit_code, int) and isinstance(cls.http_status, int), name
        assert errors.exit_code_for(cls("x")) == cls.exit_code
    assert errors.exit_code_for(ValueError("x")) == 1 and errors.http_status_for(ValueError("x")) == 500
    import ast
    from pathlib import Path

    root = Path(errors.__file__).parent
    outside = [
        f"{f.relative_to(root)}:{node.name}"
        for f in root.rglob("*.py")
        if f.name != "errors.py"
        for node in ast.walk(ast.parse(f.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(getattr(b, "id", "") in classes or getattr(b, "attr", "") in classes for b in node.bases)
    ]
    assert outside == [], f"error classes outside errors.py: {outside}"


def test_every_operation_is_routed_and_typed_the_same_in_every_transport(connect):
    """query/wire.py is the one table: the HTTP app has a route for each, and the embedded
    transport refuses a parameter of the wrong type as HTTP does."""
    import pytest as _pytest

    from safestats.query.wire import OPERATIONS

    s = connect()
    service = s._transport._service
    from safestats.service.app import create_app

    routes = {(r.path, m) for r in create_app(service).routes for m in getattr(r, "methods", ())}
    for op in OPERATIONS.values():
        assert (op.path, op.method) in routes, op.name
    with _pytest.raises(QueryError, match="audit_id must be a whole number"):
        s._transport.request("release_save", {"audit_id": "3", "name": "x"})
    with _pytest.raises(ValueError, match="unknown operation"):
        s._transport.request("drop_tables", {})


def test_a_refusal_in_a_notebook_is_one_block_and_typos_get_a_suggestion(connect):
    """IPython renders an exception with ``_render_traceback_``: a user error shows as its class
    and message only (no frames through the client and the service); a mistyped table or column
    is answered with the closest name, and identifiers are not offered as columns."""
    import safestats as ss
    from safestats.errors import CatalogError, ServiceError

    s = connect()
    with pytest.raises(QueryError) as caught:
        s.table("PupilOnRoll").group_by("phse").count().run()
    message = str(caught.value)
    assert "did you mean 'phase'?" in message and "pupil_id" not in message and "upn" not in message
    block = caught.value._render_traceback_()
    assert len(block) == 1 and "QueryError" in block[0] and "did you mean 'phase'" in block[0]
    with pytest.raises(ss.SafestatsError, match="did you mean 'PupilOnRoll'"):
        s.table("PupilsOnRoll").count().run()
    assert isinstance(CatalogError("x"), ss.SafestatsError)
    service_error = ServiceError("the service failed")
    assert len(service_error._render_traceback_()) >= 1  # not a user error: the whole story
