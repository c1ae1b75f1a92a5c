"""Protective markings: the one place that says how each classification looks and is handled.

The catalog says which classifications exist, in order, and their legacy impact levels
(``catalog.yaml``); this module says how a marking is written (``"OFFICIAL-SENSITIVE (IL3)"``),
its colour on banners, charts and report pages, and its handling caveat. Adding or changing a
marking is one entry in :data:`MARKINGS`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MARKINGS", "Marking", "caveat", "colour", "marking_text"]


@dataclass(frozen=True)
class Marking:
    label: str
    colour: str  # banner background (white text)
    caveat: str  # how to handle what carries it


MARKINGS: dict[str, Marking] = {
    m.label: m
    for m in (
        Marking("OFFICIAL", "#1d70b8", "Handle as OFFICIAL: aggregate statistics protected by safestats."),
        Marking(
            "OFFICIAL-SENSITIVE",
            "#b10e1e",
            "OFFICIAL-SENSITIVE: restricted pupil characteristics. Share only with those approved for this "
            "data; store encrypted; securely destroy after use.",
        ),
    )
}
UNKNOWN_COLOUR = "#505a5f"


def marking_text(label: str, impact_level: str = "") -> str:
    """How a marking is written: the label, and its legacy impact level when it has one.

    >>> marking_text("OFFICIAL-SENSITIVE", "IL3")
    'OFFICIAL-SENSITIVE (IL3)'
    """
    return f"{label} ({impact_level})" if impact_level else label


def colour(label: str) -> str:
    """The banner colour of ``label`` (grey for a label this module does not know)."""
    m = MARKINGS.get(label)
    return m.colour if m else UNKNOWN_COLOUR


def caveat(label: str) -> str:
    """How to handle what carries ``label`` (shown with the banner of every result)."""
    m = MARKINGS.get(label)
    return m.caveat if m else f"Handle as {label}."
