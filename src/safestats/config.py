"""Settings, declared once: one table of (name, default, help).

Settings are read from the environment (``SAFESTATS_<NAME>``) only at the entry points (the
command line, :func:`safestats.connect`), then passed down as a :class:`Settings` object.
``docs/configuration.md`` documents every setting; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from safestats.errors import ConfigError

__all__ = ["SETTINGS", "Settings", "project_root", "read_yaml"]


def read_yaml(path: Path, what: str, error: type[ConfigError] = ConfigError) -> Any:
    """Parse a YAML file; a missing or malformed file is ``error`` naming the file."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None


def project_root() -> Path:
    """The source checkout safestats runs from (where ``data/`` and ``notebooks/`` live)."""
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str


def _root(*parts: str) -> str:
    return str(project_root().joinpath(*parts))


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "data_dir",
        _root("data", "synthetic", "sample"),
        "Folder of the census store: the Parquet tables, schools.csv and manifest.json.",
    ),
    Setting("engine", "duckdb", "Engine computing the exact aggregates: duckdb (one machine) or spark."),
    Setting(
        "spark_master",
        "local[2]",
        "Spark master URL for the spark engine: local[N] in process, or spark://host:7077, yarn, k8s://...",
    ),
    Setting(
        "spark_options", "", "Extra Spark settings for the spark engine, as spark.key=value pairs separated by commas."
    ),
    Setting("catalog", "", "Catalog YAML file; empty means the catalog shipped with safestats."),
    Setting("policy", "", "Access and disclosure policy YAML; empty means the shipped policy."),
    Setting(
        "store_url",
        "sqlite:///" + _root("var", "safestats.db"),
        "SQLAlchemy URL of the service's own database (audit log, later the ledger).",
    ),
    Setting(
        "secret_key_file",
        _root("var", "safestats.key"),
        "The service's secret key (created on first use, mode 0600): pseudonyms in published reports.",
    ),
    Setting(
        "signing_key_file",
        _root("var", "audit-signing.key"),
        "The service's Ed25519 key that signs audit tree heads (created on first use, mode 0600); its public "
        "key is written beside it as <file>.pub and is all a verifier needs.",
    ),
    Setting(
        "witness_file",
        "",
        "Append-only file outside the store where every signed tree head is also written (put it where the "
        "service can append but not rewrite: another volume, chattr +a, a log shipper); empty: beside the "
        "SQLite database (<db>.heads.jsonl), or var/audit-heads-<store>.jsonl for another store.",
    ),
    Setting(
        "auth_failure_limit",
        20,
        "Failed authentications a minute from one address before it gets 429 (only the first refusal of "
        "each minute is audited).",
    ),
    Setting(
        "settle_after_s",
        600,
        "At start-up, budget reservations older than this many seconds that no release explains (a service "
        "killed mid-release) are charged, each with an audit record.",
    ),
    Setting(
        "output_checking_dir",
        _root("var", "output-checking"),
        "Where sdc releases leave their output-checking records (ACRO results.json layout, per user and day).",
    ),
    Setting("user", "demo.analyst", "User name in embedded mode (must be in the policy)."),
    Setting("interaction", "manual", "Interaction type recorded in the audit log: manual, ad hoc, scheduled or api."),
    Setting("max_cells", 50_000, "Most cells a single query may return."),
    Setting("max_group_keys", 4, "Most group-by keys (and histogram bins) in one query."),
    Setting("max_filters", 20, "Most filter conditions in one query."),
    Setting(
        "max_link_cells",
        200_000,
        "sdc: most cells of the common refinement of a table and the user's earlier tables checked together.",
    ),
    Setting("host", "127.0.0.1", "Address `safestats serve` binds to."),
    Setting("port", 8750, "Port `safestats serve` listens on."),
    Setting("tls_cert", "", "TLS certificate file (PEM) for `safestats serve`; empty: plain HTTP."),
    Setting("tls_key", "", "TLS private key file (PEM) for `safestats serve`."),
    Setting("max_request_bytes", 65_536, "Largest request body the service accepts."),
    Setting("rate_limit", 120, "Requests per user per minute the service accepts."),
)

INTERACTIONS = ("manual", "ad hoc", "scheduled", "api")


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    engine: str
    spark_master: str
    spark_options: str
    catalog: str
    policy: str
    store_url: str
    secret_key_file: str
    signing_key_file: str
    witness_file: str
    settle_after_s: int
    auth_failure_limit: int
    output_checking_dir: str
    user: str
    interaction: str
    max_cells: int
    max_group_keys: int
    max_filters: int
    max_link_cells: int
    host: str
    port: int
    tls_cert: str
    tls_key: str
    max_request_bytes: int
    rate_limit: int

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``SAFESTATS_*`` variables from ``environ``, then ``overrides``."""
        values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
        for s in SETTINGS:
            key = f"SAFESTATS_{s.name.upper()}"
            if environ and key in environ:
                values[s.name] = environ[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for name in (
            "max_cells",
            "max_group_keys",
            "max_filters",
            "max_link_cells",
            "port",
            "max_request_bytes",
            "rate_limit",
            "settle_after_s",
            "auth_failure_limit",
        ):
            try:
                values[name] = int(values[name])
            except ValueError:
                raise ConfigError(f"{name} must be a whole number, not {values[name]!r}") from None
        if values["interaction"] not in INTERACTIONS:
            raise ConfigError(f"interaction {values['interaction']!r} is not one of {', '.join(INTERACTIONS)}")
        values["data_dir"] = Path(values["data_dir"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)
