"""The service: every request goes through one pipeline, whatever the transport.

    1. authenticate  the identity comes from the access policy (embedded) or a token (HTTP)
    2. parse         wire spec or SQL -> Query (aggregate-only)
    3. validate      against the catalog -> Plan (identifiers, domains, cell limit)
    4. authorise     table and column grants of the identity's groups (deny by default)
    5. reserve       dp mode: the cached release if the same query was answered before;
                     else the privacy budget, atomically, before anything runs
    6. execute       the engine computes exact aggregates; they never leave the service
    7. protect       dp: OpenDP noise then post-processing; sdc: suppression
    8. label         the highest classification of everything touched
    9. audit         one hash-chained record, answered or refused: no record, no result
    10. release      the payload the client turns into a ProtectedResult

Fail closed: an error at any step is audited and raised; if the audit record itself cannot be
written, the caller gets :class:`~safestats.errors.AuditFailure` and no data. A budget
reservation is cancelled if nothing was computed and charged if noise was drawn.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from safestats.access.policy import Disclosure, Identity, Policy, ensure_allowed, load_policy
from safestats.audit.heads import witness_file
from safestats.audit.log import AuditLog
from safestats.catalog import Catalog, load_catalog
from safestats.census_keys import load_kek
from safestats.config import Settings
from safestats.dataset import Dataset, open_dataset
from safestats.disclosure.dp import plan_dp, protect_dp
from safestats.disclosure.linked import LinkStore
from safestats.disclosure.protect import protect_cell_key, sdc_plan
from safestats.disclosure.sdc import check_margins, check_sdc, protect_sdc
from safestats.engines import ENGINES, create_engine
from safestats.engines.base import Engine, execute_with_margins
from safestats.errors import AuditFailure, ConfigError, SafestatsError, ServiceError, UserError
from safestats.labels import label_for
from safestats.query.builder import builder_text
from safestats.query.model import Query
from safestats.query.sql import parse_sql
from safestats.query.validate import plan_query
from safestats.query.wire import operation
from safestats.releases import result_digest
from safestats.service.access_requests import AccessRequests
from safestats.service.incident_watch import IncidentWatch
from safestats.service.metadata import MetadataRequests
from safestats.service.output_checking import write_output_record
from safestats.service.output_review import OutputReview
from safestats.service.payload import release_payload
from safestats.service.recorder import Recorder, describe_query
from safestats.service.releases import ReleaseRequests
from safestats.service.second_factor import open_session, require_second_factor
from safestats.store.cache import ReleaseCache, cache_key
from safestats.store.factors import SecondFactors
from safestats.store.ledger import Ledger, current_period
from safestats.store.published import PublishedStore
from safestats.store.releases import ReleaseStore, canonical
from safestats.store.users import AuthError, UserStore

__all__ = ["Service", "witness_file"]  # witness_file lives in audit/heads.py


class Service:
    """The safestats service: data, policy, engine and audit log live here, never in a client."""

    def __init__(self, settings: Settings, *, engine: str | None = None) -> None:
        self.settings = settings
        self.dataset: Dataset = open_dataset(settings.data_dir, kek=load_kek(settings.census_kek_file))
        self.dataset.decryption()  # an encrypted census without its key refuses the start, not the first query
        self.catalog: Catalog = load_catalog(settings.catalog or None, data_dir=self.dataset.path)
        self.policy: Policy = load_policy(settings.policy or None, catalog=self.catalog)
        self._engine_name = engine or settings.engine
        if self._engine_name not in ENGINES:
            raise ConfigError(f"unknown engine {self._engine_name!r}; engines are: {', '.join(ENGINES)}")
        self._engine: Engine | None = None  # opened on the first query: admin commands never need it
        self._secret = self.secret_key()
        from safestats.audit.heads import Signer

        self.audit = AuditLog.open(
            settings.store_url,
            key=self._secret,
            signer=Signer(settings.signing_key_file),
            witness=witness_file(settings),
        )
        self.ledger = Ledger(self.audit.engine)
        self.cache = ReleaseCache(self.audit.engine)
        self.links = LinkStore(PublishedStore(self.audit.engine))
        self.results = ReleaseStore(self.audit.engine)
        self.users = UserStore(self.audit.engine)
        self.factors = SecondFactors(
            self.audit.engine,
            self._secret,
            attempts=settings.second_factor_attempts,
            lockout_s=settings.second_factor_lockout_s,
            session_hours=settings.session_hours,
        )
        self.recorder = Recorder(self.audit, self.catalog, self.dataset)
        self.metadata = MetadataRequests(self)
        self.release_requests = ReleaseRequests(self)
        self.access = AccessRequests(self)
        self.outputs = OutputReview(self)
        self.settle_orphans(settings.settle_after_s)  # reservations a killed service left behind
        self.watch = IncidentWatch(self) if settings.incident_watch else None
        self.check_incidents()  # from here on: what came before is the scan's
        from safestats.dataset import sha256_file

        self._inputs = {
            "catalog_sha256": sha256_file(Path(self.catalog.path)),
            "policy_sha256": sha256_file(Path(self.policy.path)),
        }

    @property
    def engine(self) -> Engine:
        """The query engine over the census, opened on first use."""
        if self._engine is None:
            self._engine = create_engine(self._engine_name, self.dataset, self.settings)
        return self._engine

    # -- 1. authenticate (embedded: the policy names the user) ---------------------------------
    def identity(self, user: str, *, interaction: str = "manual", client: Mapping[str, Any] | None = None) -> Identity:
        managed = None if user in self.policy.users else self.users.get_user(user)
        who = self.policy.identity(user, interaction=interaction, client=client, managed=managed)
        approved, lapsed = self.access.grants_for(who.groups)  # approved access requests, today
        return replace(who, approved=approved, lapsed=lapsed) if approved or lapsed else who

    def authenticate(
        self, token: str | None, *, interaction: str = "api", client: Mapping[str, Any] | None = None
    ) -> Identity:
        """The identity behind a bearer token; a failure is audited (without the token)."""
        started = time.perf_counter()
        try:
            if token is not None and token.startswith("ss2_"):  # a session a second factor opened
                user = self.factors.authenticate(token)
                return replace(
                    self.identity(user, interaction=interaction, client=client), remote=True, second_factor=True
                )
            user = self.users.authenticate(token)
            return replace(self.identity(user, interaction=interaction, client=client), remote=True)
        except sa.exc.SQLAlchemyError:
            raise AuditFailure("the service's store is unavailable; nothing was run or released") from None
        except UserError as e:
            claimed = e.details.get("claimed") if isinstance(e, AuthError) else None
            who = Identity(
                user=str(claimed or "anonymous"),
                groups=(),
                organisation="",
                interaction=interaction,
                client=dict(client or {}),
            )
            record = self.recorder.draft(who, "authenticate")
            self.recorder.write(record, started, outcome="refused", reason=str(e))
            self.check_incidents()
            raise AuthError(str(e), claimed=claimed) from None

    def secret_key(self) -> bytes:
        """The service's secret key, created (0600) on first use."""
        import os
        import secrets
        from pathlib import Path

        path = Path(self.settings.secret_key_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def record_key_params(self) -> tuple[int, int, int, int]:
        """The keyed-hash parameters of the pupils' record keys (cell-key perturbation), derived
        from the secret key: fixed for the service, unknown to its users."""
        from safestats.engines.base import RECORD_KEY_MODULUS

        digest = hmac.new(self._secret, b"safestats record keys v1", hashlib.sha256).digest()
        parts = [int.from_bytes(digest[i : i + 8], "big") % (RECORD_KEY_MODULUS - 1) + 1 for i in range(0, 32, 8)]
        return (parts[0], parts[1], parts[2], parts[3])

    # -- the parts it is composed of --------------------------------------------------------
    def audit_admin(self, actor: str, operation: str, reason: str, *, privacy: dict[str, Any] | None = None) -> int:
        """Record an administrative action (users, tokens, budgets) before it takes effect."""
        return self.recorder.admin(actor, operation, reason, privacy=privacy)

    def audit_rejection(
        self, *, user: str, interaction: str, client: Mapping[str, Any], operation: str, reason: str
    ) -> None:
        """Record a request the transport rejected before the pipeline (size, rate limits)."""
        self.recorder.rejection(user=user, interaction=interaction, client=client, operation=operation, reason=reason)
        self.check_incidents()

    def check_incidents(self) -> list[dict[str, Any]]:
        """The incident rules that need only recent records, over what was written since the
        last check (service/incident_watch.py); the new incidents. Never raises."""
        return self.watch.check() if self.watch is not None else []

    def whoami(self, *, identity: Identity) -> dict[str, Any]:
        return self.metadata.whoami(identity=identity)

    def open_session(self, *, identity: Identity, code: str) -> dict[str, Any]:
        """Exchange the caller's token and a TOTP code for a session credential (audited)."""
        return open_session(self, identity, code)

    def budget(self, *, identity: Identity) -> dict[str, Any]:
        return self.metadata.budget(identity=identity)

    def set_budget(self, user: str, amount: Fraction, *, period: str | None = None, by: str = "data owner") -> Any:
        return self.metadata.set_budget(user, amount, period=period, by=by)

    def default_budget(self, user: str) -> Fraction | None:
        return self.metadata.default_budget(user)

    def catalog_info(self, *, identity: Identity, table: str | None = None) -> dict[str, Any]:
        return self.metadata.catalog_info(identity=identity, table=table)

    def save_release(self, **kwargs: Any) -> dict[str, Any]:
        return self.release_requests.save_release(**kwargs)

    def record_export(self, *, identity: Identity, audit_id: int, file: str, protection: str) -> dict[str, Any]:
        """Record that ``identity`` wrote its released result ``audit_id`` to ``file`` (audited,
        refused for a result that is not the caller's)."""
        return self.release_requests.record_export(
            identity=identity, audit_id=audit_id, file=file, protection=protection
        )

    def releases(self, *, identity: Identity, everyone: bool = False) -> dict[str, Any]:
        return self.release_requests.releases(identity=identity, everyone=everyone)

    def release(self, *, identity: Identity, release_id: str) -> dict[str, Any]:
        return self.release_requests.release(identity=identity, release_id=release_id)

    def reproduce(self, *, identity: Identity, release_id: str) -> dict[str, Any]:
        return self.release_requests.reproduce(identity=identity, release_id=release_id)

    # -- the requests ------------------------------------------------------------------------
    def handle(self, name: str, params: Mapping[str, Any], *, identity: Identity) -> dict[str, Any]:
        """Answer the request ``name`` (query/wire.py) with ``params``: what every transport calls."""
        op = operation(name)
        try:
            args = [p.check(params.get(p.name)) for p in op.params if p.positional]
            kwargs = {p.name: p.check(params.get(p.name)) for p in op.params if not p.positional}
            target: Any = self
            for part in op.handler.split("."):  # a method of the service, or of one of its rooms
                target = getattr(target, part)
            result: dict[str, Any] = target(*args, identity=identity, **kwargs)
            return result
        finally:
            self.check_incidents()  # answered or refused: the request's records are written

    def query(self, wire: Mapping[str, Any], *, identity: Identity) -> dict[str, Any]:
        """Run a query given in its wire form; returns the release payload."""
        return self.run_query(identity, "query", lambda: Query.from_wire(dict(wire)), source=None)

    def sql(self, text: str, *, identity: Identity) -> dict[str, Any]:
        """Run an aggregate SQL query; returns the release payload."""
        return self.run_query(identity, "sql", lambda: parse_sql(text, catalog=self.catalog), source=text)

    def preview(self, wire: Mapping[str, Any], *, identity: Identity) -> dict[str, Any]:
        """What a query would cost and how accurate it would be, reading no data (audited)."""
        from safestats.service.preview import preview

        return preview(self, wire, identity=identity)

    def cache_key_for(self, query: Query, dp_plan: Any, disclosure: Disclosure) -> str:
        """The cached release answers only the same query on the same data, catalog and policy."""
        return cache_key(
            query.canonical(), dp_plan.describe() | disclosure.describe() | self._inputs, self.dataset.snapshot_id
        )

    # -- the pipeline ---------------------------------------------------------------------------
    def run_query(
        self, identity: Identity, operation: str, parse: Callable[[], Query], *, source: str | None
    ) -> dict[str, Any]:
        d = self.policy.disclosure_for(identity)
        with ExitStack() as held:  # what _release locks, held to its end (the commit included)
            return self._release(identity, operation, parse, source=source, disclosure=d, held=held)

    def _release(
        self,
        identity: Identity,
        operation: str,
        parse: Callable[[], Query],
        *,
        source: str | None,
        disclosure: Disclosure,
        held: ExitStack,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        record = self.recorder.draft(identity, operation)
        if source is not None:
            record["query"] = {"sql": source}
        reservation: int | None = None
        specs: list[Any] = []
        try:
            query = parse()  # 2. parse
            record.update(describe_query(query, source))
            plan = plan_query(
                query,
                catalog=self.catalog,
                max_cells=self.settings.max_cells,  # 3.
                max_group_keys=self.settings.max_group_keys,
                max_filters=self.settings.max_filters,
            )
            ensure_allowed(identity, query, policy=self.policy, catalog=self.catalog)  # 4.
            require_second_factor(self, identity, plan)  # 4. and IL3 over the network: a TOTP session
            record["disclosure"] = disclosure.describe()
            if disclosure.mode == "dp":
                dp_plan = plan_dp(plan, disclosure, max_cells=self.settings.max_cells)
                # the cached release answers only the same query on the same data, catalog and policy
                key = self.cache_key_for(query, dp_plan, disclosure)
                cached = self.cache.get(identity.user, key)
                if cached is not None:
                    bal = self.ledger.balance(
                        identity.user,
                        self.catalog.dataset,
                        current_period(disclosure.period),
                        disclosure.unit,
                        disclosure.budget,
                    )
                    now = {"budget": str(bal.total), "left": str(bal.left), "period": current_period(disclosure.period)}
                    return self._cached(identity, record, started, *cached, now=now)
                period = current_period(disclosure.period)
                reservation, balance = self.ledger.reserve(  # 5. budget (ε or ρ, and δ), before anything runs
                    identity.user,
                    self.catalog.dataset,
                    period,
                    disclosure.unit,
                    dp_plan.loss,
                    default=disclosure.budget,
                    query_hash=query.hash,
                    delta=dp_plan.delta,
                    delta_total=disclosure.delta_budget,
                )
                record["privacy"] = dp_plan.describe() | {
                    "spent": str(dp_plan.loss),
                    "period": period,
                    "budget": str(balance.total),
                    "left": str(balance.left),
                    "delta_spent": str(dp_plan.delta),
                    "delta_left": str(balance.delta_left),
                    "cached": False,
                }
                exact = self.engine.execute(dp_plan.plan)  # 6. exact aggregates: never leave here
                hist = self.engine.execute(dp_plan.histogram_plan) if dp_plan.histogram_plan else None
                protected = protect_dp(exact, hist, dp_plan)  # 7. noise, then post-processing only
                record["privacy"]["certified"] = (protected.privacy or {}).get("certified")
                del exact, hist
            elif disclosure.protection == "cell_key":
                plan = replace(plan, record_key=self.record_key_params())
                exact = self.engine.execute(plan)  # 6. exact aggregates: never leave this function
                protected = protect_cell_key(exact, plan, disclosure)  # 7. consistent perturbation
                del exact
            else:
                check_sdc(plan, self.catalog)  # what the differencing check cannot cover is refused here
                plan = sdc_plan(plan, disclosure)
                margins = None
                if query.totals:  # 6. exact aggregates of the cells and the margins: never leave here
                    check_margins(plan)
                    exact, *margins = execute_with_margins(self.engine, plan)
                else:
                    exact = self.engine.execute(plan)  # 6. exact aggregates: never leave this function
                # sdc with suppression: one protect-and-record at a time per disclosure domain
                # (across processes on one store), from reading the earlier releases to the audit
                # record, so two tables cannot each pass without the other in view (linked
                # tables); the exact aggregates above depend on the data alone, so they run outside
                held.enter_context(self.links.lock(disclosure.domain))
                protected, specs = protect_sdc(  # 7. primary rules, secondary suppression, attacker audit
                    exact,
                    plan,
                    disclosure,
                    execute=self.engine.execute,
                    catalog=self.catalog,
                    links=self.links if disclosure.link_tables else None,
                    snapshot_id=self.dataset.snapshot_id,
                    max_atoms=self.settings.max_link_cells,
                    max_seconds=self.settings.max_link_seconds,
                    margins=margins,
                )
                del exact, margins
            # the records used: distinct pupils in the query's scope, for the data owner's
            # reports (audit record only: never in the payload)
            record["records_used"] = self.engine.scope(plan)
            label, impact = label_for(plan, self.catalog)  # 8.
            record.update(
                fields_returned=list(query.returned),
                label=label,
                cells_released=protected.cells - protected.suppressed,
                cells_suppressed=protected.suppressed,
            )
            payload = release_payload(protected, query, record, impact, self.dataset)
            payload["meta"]["handling"] = self.policy.caveat(label)
            payload["meta"]["export"] = {
                **self.policy.exports.to_meta(),
                "required": label != self.catalog.classifications[0],  # above the lowest marking
            }
            if disclosure.mode == "sdc":  # the output checker's record, before the audit record names it
                check = write_output_record(
                    Path(self.settings.output_checking_dir),
                    user=identity.user,
                    protected=protected,
                    query=query.canonical(),
                    command=source or builder_text(query),
                    disclosure=record["disclosure"],
                    provenance={"query_hash": query.hash, "snapshot_id": self.dataset.snapshot_id, "label": label},
                    acro_version=self.settings.acro_version,
                )
                record["disclosure"] = {**record["disclosure"], "output_check": check}
            record["disclosure"] = {**record["disclosure"], "result_sha256": result_digest(payload)}
        except UserError as e:
            self._settle(reservation, drawn=False)
            self.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        except SafestatsError as e:
            self._settle(reservation, drawn=False)
            self.recorder.write(record, started, outcome="error", reason=f"{e.__class__.__name__}: {e}")
            raise
        except Exception as e:
            self._settle(reservation, drawn=False)
            seq = self.recorder.write(record, started, outcome="error", reason=e.__class__.__name__)
            raise ServiceError(f"the service failed (audit record {seq}); nothing was released") from e
        # 9. + 10. one release, one transaction: the audit record, the published sdc structure,
        # the kept result, the ledger settlement and the cache entry commit together or not at all
        heads: list[Any] = []
        digest = record["disclosure"]["result_sha256"]
        try:
            with self.audit.engine.begin() as conn:
                seq = self.recorder.write(record, started, outcome="released", reason="", conn=conn, heads=heads)
                if specs:
                    self.links.add(
                        disclosure.domain,
                        identity.user,
                        query.hash,
                        self.dataset.snapshot_id,
                        specs,
                        audit_seq=seq,
                        conn=conn,
                    )
                payload["meta"]["audit_id"] = seq
                text = canonical(payload)  # built once: the kept result and the cache entry
                self.results.keep(seq, identity.user, payload, digest, conn=conn, text=text)
                if reservation is not None:
                    self.ledger.commit(reservation, seq, conn=conn)
                    self.cache.put(identity.user, key, payload, seq, conn=conn, text=text)
        except Exception as e:  # nothing of the release was recorded: nothing is released
            payload["meta"]["audit_id"] = None
            self._settle(reservation, drawn=True)  # noise was drawn: the spend stands
            if isinstance(e, AuditFailure):
                raise
            raise AuditFailure(
                "the release could not be recorded (the service's store failed); nothing was released"
            ) from e
        self.audit.publish(heads)
        return payload

    def _settle(self, reservation: int | None, *, drawn: bool) -> None:
        """Settle a budget reservation honestly: cancelled if nothing was computed; if noise was
        drawn but the release could not be recorded, charged with an audit record of its own
        (and if the store cannot take that either, it stays reserved — still counted against the
        budget — until the service settles it at its next start)."""
        if reservation is None:
            return
        try:
            if drawn:
                self.settle_reservation(reservation, "noise drawn, release not recorded")
            else:
                self.ledger.cancel(reservation)
        except Exception:  # noqa: BLE001 - the reservation still counts; start-up settles it
            pass

    def settle_reservation(self, reservation: int, why: str) -> int:
        """Charge a reservation that no release explains, with its own audit record, in one
        transaction; returns the record's number."""
        spend = self.ledger.spend(reservation)
        who = Identity(user="safestats", groups=(), organisation="", interaction="ad hoc")
        record = self.recorder.draft(who, "budget settle")
        record["privacy"] = {
            "for_user": spend["user"],
            "reservation": reservation,
            "spent": spend["amount"],
            "unit": spend["unit"],
            "period": spend["period"],
            "settled": True,
        }
        with self.audit.engine.begin() as conn:
            seq = self.recorder.write(
                record,
                time.perf_counter(),
                outcome="answered",
                conn=conn,
                reason=f"reservation {reservation} of {spend['user']} charged: {why}",
            )
            self.ledger.commit(reservation, seq, conn=conn)
        return seq

    def settle_orphans(self, older_than_s: float) -> list[int]:
        """At start-up: charge every reservation older than ``older_than_s`` seconds that no
        release explains (a service killed between reserving and recording), each audited."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than_s)
        done = []
        for spend in self.ledger.spends(status="reserved"):
            if dt.datetime.fromisoformat(str(spend["time_utc"])) <= cutoff:
                self.settle_reservation(
                    int(spend["id"]),
                    "found unsettled at start-up (the service stopped between reserving and recording)",
                )
                done.append(int(spend["id"]))
        return done

    def _cached(
        self,
        identity: Identity,
        record: dict[str, Any],
        started: float,
        payload: dict[str, Any],
        first_seq: int,
        *,
        now: Mapping[str, str],
    ) -> dict[str, Any]:
        """The stored release of the same query: no new draw, no new spend, a new audit record;
        it reports a spend of 0 and the budget as it is now (``now``), not as it was then."""
        privacy = dict(payload["meta"].get("privacy") or {}) | {
            "spent": "0",
            "cached": True,
            "first_release": first_seq,
            **now,
        }
        meta = payload["meta"] | {"privacy": privacy}
        record.update(
            fields_returned=list(payload["table"]["columns"]),
            label=meta["label"],
            cells_released=meta["cells"] - meta["suppressed"],
            cells_suppressed=meta["suppressed"],
            privacy=privacy,
        )
        record["disclosure"] = {**record["disclosure"], "result_sha256": result_digest(payload)}
        heads: list[Any] = []
        with self.audit.engine.begin() as conn:  # the record and the kept result together
            seq = self.recorder.write(
                record,
                started,
                outcome="released",
                reason=f"cached release of audit record {first_seq}",
                conn=conn,
                heads=heads,
            )
            out = payload | {"meta": meta | {"audit_id": seq, "cached_from": first_seq}}
            self.results.keep(seq, identity.user, out, record["disclosure"]["result_sha256"], conn=conn)
        self.audit.publish(heads)
        return out
