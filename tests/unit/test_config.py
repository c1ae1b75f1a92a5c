from __future__ import annotations

import pytest

from safestats.config import SETTINGS, Settings
from safestats.errors import ConfigError
from tests.conftest import ROOT


def test_every_setting_is_documented():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for s in SETTINGS:
        assert f"| `{s.name}` |" in doc, f"setting {s.name} is not in docs/configuration.md"


def test_environment_then_overrides():
    s = Settings.load({"SAFESTATS_USER": "a", "SAFESTATS_MAX_CELLS": "7"}, user="b")
    assert s.user == "b" and s.max_cells == 7


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SAFESTATS_MAX_CELLS": "lots"}, "max_cells must be a whole number"),
        ({"SAFESTATS_INTERACTION": "telepathic"}, "interaction 'telepathic' is not one of"),
        ({"SAFESTATS_LOG_FORMAT": "xml"}, "log_format must be json or text"),
        ({"SAFESTATS_SHUTDOWN_GRACE_S": "soon"}, "shutdown_grace_s must be a whole number"),
    ],
)
def test_bad_settings_are_clear(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(env)
