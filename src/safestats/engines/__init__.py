"""Engines compute exact aggregates inside the service; registered by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from safestats.errors import ConfigError

if TYPE_CHECKING:
    from safestats.config import Settings
    from safestats.dataset import Dataset
    from safestats.engines.base import Engine

__all__ = ["ENGINES", "create_engine", "spark_available"]


def _duckdb(dataset: Dataset, settings: Settings | None = None) -> Engine:
    from safestats.engines.duckdb import DuckDBEngine

    return DuckDBEngine(dataset)


def _memory(dataset: Dataset, settings: Settings | None = None) -> Engine:
    from safestats.engines.memory import MemoryEngine

    return MemoryEngine.from_dataset(dataset)


def _spark(dataset: Dataset, settings: Settings | None = None) -> Engine:
    from safestats.engines.spark import SparkEngine

    if settings is None:
        return SparkEngine(dataset)
    return SparkEngine(
        dataset, master=settings.spark_master, options=settings.spark_options, data_uri=settings.spark_data_uri
    )


ENGINES: dict[str, Callable[..., Engine]] = {"duckdb": _duckdb, "memory": _memory, "spark": _spark}


def spark_available() -> bool:
    """Whether the spark extra and a Java runtime are installed here."""
    import importlib.util
    import shutil

    return importlib.util.find_spec("pyspark") is not None and shutil.which("java") is not None


def create_engine(name: str, dataset: Dataset, settings: Settings | None = None) -> Engine:
    """The engine registered as ``name`` over ``dataset`` (every engine meets the Engine protocol)."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; engines are: {', '.join(ENGINES)}") from None
    return factory(dataset, settings)
