"""Engines compute exact aggregates inside the service; registered by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safestats.errors import ConfigError

__all__ = ["ENGINES", "create_engine"]


def _duckdb(dataset: Any) -> Any:
    from safestats.engines.duckdb import DuckDBEngine

    return DuckDBEngine(dataset)


def _memory(dataset: Any) -> Any:
    from safestats.engines.memory import MemoryEngine

    return MemoryEngine.from_dataset(dataset)


ENGINES: dict[str, Callable[[Any], Any]] = {"duckdb": _duckdb, "memory": _memory}


def create_engine(name: str, dataset: Any) -> Any:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; engines are: {', '.join(ENGINES)}") from None
    return factory(dataset)
