"""Data files shipped with safestats: the catalog, the access policy and the code lists."""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).parent
CODELISTS = RESOURCES / "codelists"
