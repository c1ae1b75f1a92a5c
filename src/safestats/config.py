"""Settings, declared once: the fields of :class:`Settings` (type, default, help).

Settings are read from the environment (``SAFESTATS_<NAME>``) only at the entry points (the
command line, :func:`safestats.connect`), then passed down as a :class:`Settings` object.
``docs/configuration.md`` documents every setting; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
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


def _setting(default: Any, help: str) -> Any:
    """A settings field: its default and its help text (the field's metadata)."""
    return field(default=default, metadata={"help": help})


INTERACTIONS = ("manual", "ad hoc", "scheduled", "api")


@dataclass(frozen=True)
class Settings:
    """Every setting: its type, its default and what it does, declared here once.

    :data:`SETTINGS` and ``docs/configuration.md`` are read off these fields.
    """

    data_dir: Path = _setting(
        Path(_root("data", "synthetic", "sample")),
        "Folder of the census store: the Parquet tables, schools.csv and manifest.json.",
    )
    engine: str = _setting(
        "duckdb",
        "Engine computing the exact aggregates: duckdb (one machine) or spark.",
    )
    spark_master: str = _setting(
        "local[2]",
        "Spark master URL for the spark engine: local[N] in process, or spark://host:7077, yarn, k8s://...",
    )
    spark_options: str = _setting(
        "",
        "Extra Spark settings for the spark engine, as spark.key=value pairs separated by commas.",
    )
    spark_data_uri: str = _setting(
        "",
        "Where the spark engine's executors read the census tables: a URI prefix (hdfs://nn/census/2017, "
        "s3a://bucket/census/2017, file:///shared/census) holding the files the manifest in data_dir names; "
        "empty: data_dir itself.",
    )
    catalog: str = _setting(
        "",
        "Catalog YAML file; empty means the catalog shipped with safestats.",
    )
    policy: str = _setting(
        "",
        "Access and disclosure policy YAML; empty means the shipped policy.",
    )
    store_url: str = _setting(
        "sqlite:///" + _root("var", "safestats.db"),
        "SQLAlchemy URL of the service's own database (audit log, later the ledger).",
    )
    secret_key_file: str = _setting(
        _root("var", "safestats.key"),
        "The service's secret key (created on first use, mode 0600): pseudonyms in published reports.",
    )
    census_kek_file: str = _setting(
        "",
        "The key-encryption key of an encrypted census (32 random bytes, base64; mode 0600; make one with "
        "`safestats census new-kek FILE`); empty: the SAFESTATS_CENSUS_KEK variable, if set.",
    )
    signing_key_file: str = _setting(
        _root("var", "audit-signing.key"),
        "The service's Ed25519 key that signs audit tree heads (created on first use, mode 0600); its public "
        "key is written beside it as <file>.pub and is all a verifier needs.",
    )
    witness_file: str = _setting(
        "",
        "Append-only file outside the store where every signed tree head is also written (put it where the "
        "service can append but not rewrite: another volume, chattr +a, a log shipper); empty: beside the "
        "SQLite database (<db>.heads.jsonl), or var/audit-heads-<store>.jsonl for another store.",
    )
    auth_failure_limit: int = _setting(
        20,
        "Failed authentications a minute from one address before it gets 429 (only the first refusal of "
        "each minute is audited).",
    )
    settle_after_s: int = _setting(
        600,
        "At start-up, budget reservations older than this many seconds that no release explains (a service "
        "killed mid-release) are charged, each with an audit record.",
    )
    output_checking_dir: str = _setting(
        _root("var", "output-checking"),
        "Where sdc releases leave their output-checking records (ACRO results.json layout, per user and day).",
    )
    acro_version: str = _setting(
        "0.4.5",
        "The ACRO version the output-checking records name (results.json `version`): 0.4.x opens in the "
        "SACRO viewer; ACRO 1.0's own loader accepts only its exact version (e.g. 1.0.2).",
    )
    output_dir: str = _setting(
        _root("var", "outputs"),
        "Where a client writes what it saves without a path (release bundles under releases/); an HTTP "
        "client reads it from SAFESTATS_OUTPUT_DIR. Never the working directory.",
    )
    user: str = _setting(
        "demo.analyst",
        "User name in embedded mode (must be in the policy).",
    )
    interaction: str = _setting(
        "manual",
        "Interaction type recorded in the audit log: manual, ad hoc, scheduled or api.",
    )
    max_cells: int = _setting(
        50_000,
        "Most cells a single query may return.",
    )
    max_group_keys: int = _setting(
        4,
        "Most group-by keys (and histogram bins) in one query.",
    )
    max_filters: int = _setting(
        20,
        "Most filter conditions in one query.",
    )
    max_link_cells: int = _setting(
        200_000,
        "sdc: most cells of the common refinement of a table and the user's earlier tables checked together.",
    )
    max_link_seconds: int = _setting(
        15,
        "Seconds an sdc table's secondary suppression and differencing audit may take before the table is refused.",
    )
    host: str = _setting(
        "127.0.0.1",
        "Address `safestats serve` binds to.",
    )
    port: int = _setting(
        8750,
        "Port `safestats serve` listens on.",
    )
    workers: int = _setting(
        1,
        "Service processes `safestats serve` runs on its one port (each its own engine; one core each).",
    )
    request_threads: int = _setting(
        8,
        "Requests each `safestats serve` worker works on at once; the others wait their turn, in order.",
    )
    tls_cert: str = _setting(
        "",
        "TLS certificate file (PEM) for `safestats serve`; empty: plain HTTP.",
    )
    tls_key: str = _setting(
        "",
        "TLS private key file (PEM) for `safestats serve`.",
    )
    max_request_bytes: int = _setting(
        65_536,
        "Largest request body the service accepts.",
    )
    rate_limit: int = _setting(
        120,
        "Requests per user per minute the service accepts.",
    )
    session_hours: int = _setting(
        8,
        "Hours a second-factor session (POST /v1/session) lasts.",
    )
    second_factor_attempts: int = _setting(
        5,
        "Wrong TOTP codes in a row before a user's second factor is locked.",
    )
    second_factor_lockout_s: int = _setting(
        900,
        "Seconds a second factor stays locked after too many wrong codes.",
    )
    log_format: str = _setting(
        "json",
        "`safestats serve` logs one line per request to stderr: `json` (one object a line) or `text`.",
    )
    shutdown_grace_s: int = _setting(
        30,
        "Seconds `safestats serve` waits for requests in flight to finish after SIGTERM.",
    )
    incident_watch: bool = _setting(
        True,
        "Run the incident rules that need only recent records after every request (an incident is "
        "recorded at once); `safestats incidents scan` runs them all over the whole log either way.",
    )
    metrics_token_file: str = _setting(
        "",
        "A file holding the bearer token `GET /v1/metrics` asks for (e.g. Prometheus' "
        "`bearer_token_file`); empty: the metrics are served to anyone who can reach the port.",
    )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``SAFESTATS_*`` variables from ``environ``, then ``overrides``."""
        values: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        for f in fields(cls):
            key = f"SAFESTATS_{f.name.upper()}"
            if environ and key in environ:
                values[f.name] = environ[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        for f in fields(cls):
            if f.type in ("bool", bool) and not isinstance(values[f.name], bool):
                text = str(values[f.name]).strip().lower()
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise ConfigError(f"{f.name} must be true or false, not {values[f.name]!r}")
                values[f.name] = text in ("true", "1", "yes")
            if f.type in ("int", int):
                try:
                    values[f.name] = int(values[f.name])
                except ValueError:
                    raise ConfigError(f"{f.name} must be a whole number, not {values[f.name]!r}") from None
        if values["interaction"] not in INTERACTIONS:
            raise ConfigError(f"interaction {values['interaction']!r} is not one of {', '.join(INTERACTIONS)}")
        if values["log_format"] not in ("json", "text"):
            raise ConfigError(f"log_format must be json or text, not {values['log_format']!r}")
        if not 1 <= values["workers"] <= 64:
            raise ConfigError(f"workers must be from 1 to 64, not {values['workers']}")
        if not 1 <= values["request_threads"] <= 256:
            raise ConfigError(f"request_threads must be from 1 to 256, not {values['request_threads']}")
        values["data_dir"] = Path(values["data_dir"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of one setting."""
        return next(f.default for f in fields(cls) if f.name == name)


#: (name, default, help) of every setting, read off :class:`Settings`.
SETTINGS: tuple[Setting, ...] = tuple(Setting(f.name, f.default, f.metadata["help"]) for f in fields(Settings))
