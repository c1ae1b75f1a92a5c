"""The end-to-end demo that `make demo` runs."""

from __future__ import annotations

from collections.abc import Callable

from safestats.config import Settings
from safestats.dataset import open_dataset

__all__ = ["run_demo"]


def run_demo(settings: Settings, *, echo: Callable[[str], None] = print) -> None:
    dataset = open_dataset(settings.data_dir)
    echo(dataset.summary())
