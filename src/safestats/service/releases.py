"""The release requests of the service: save, list, show and reproduce (docs/releases.md).

Composed into :class:`~safestats.service.pipeline.Service` (``service.release_requests``): it
uses the service's recorder, its store of released results and its pipeline, and audits every
request like the rest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safestats.__about__ import __version__
from safestats.access.policy import Identity, ensure_allowed
from safestats.errors import ReleaseError, ServiceError, UserError
from safestats.marking import marking_text
from safestats.query.model import Query
from safestats.releases import result_digest, result_json
from safestats.service.recorder import describe_query
from safestats.service.second_factor import require_for_label

if TYPE_CHECKING:
    from safestats.service.pipeline import Service

__all__ = ["ReleaseRequests"]


class ReleaseRequests:
    """Release requests of one service."""

    def __init__(self, service: Service) -> None:
        self.s = service

    def record_export(self, *, identity: Identity, audit_id: int, file: str, protection: str) -> dict[str, Any]:
        """An audit record of a released result written to a file, and how it was protected
        (``none``: in clear, asked for explicitly). Another user's result is refused."""
        started = time.perf_counter()
        record = self.s.recorder.draft(identity, "export")
        try:
            audited = self.s.audit.record(int(audit_id))
            if audited is None or audited.get("outcome") != "released" or audited.get("user") != identity.user:
                raise ReleaseError(f"audit record {audit_id} is not a result released to you")
            if protection not in ("zip", "age", "none"):
                raise ReleaseError(f"protection must be zip, age or none, not {protection!r}")
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        for key in ("tables", "fields_filter", "fields_group", "fields_measure", "fields_requested", "fields_returned"):
            record[key] = list(audited.get(key) or [])
        record["label"] = audited.get("label")
        how = "in clear (unencrypted, asked for)" if protection == "none" else f"encrypted ({protection})"
        seq = self.s.recorder.write(
            record, started, outcome="answered", reason=f"result of record {audit_id} written to {file!r} {how}"
        )
        return {"audit_id": seq}

    def save_release(
        self,
        *,
        identity: Identity,
        audit_id: int,
        name: str,
        notebook: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        notebook_sha256: str | None = None,
    ) -> dict[str, Any]:
        """List one of the caller's released results as a named release; returns its manifest
        and the result, for the client to write as a bundle."""
        started = time.perf_counter()
        record = self.s.recorder.draft(identity, "release save")
        try:
            name = _release_name(name)
            if not isinstance(audit_id, int) or not 1 <= audit_id <= 2**62:
                raise ReleaseError(f"audit record {audit_id!r} is not a record number")
            audited = self.s.audit.record(int(audit_id))
            kept = self.s.results.result(int(audit_id))
            if audited is None or kept is None or audited.get("outcome") != "released":
                raise ReleaseError(
                    f"audit record {audit_id} is not a result the service kept; save a result as "
                    "returned by run() or sql()"
                )
            user, payload, digest = kept
            if user != identity.user or audited["user"] != identity.user:
                raise ReleaseError(f"audit record {audit_id} is not yours; save your own results as releases")
            require_for_label(self.s, identity, str(audited.get("label") or ""))  # the result comes back
            if (audited.get("disclosure") or {}).get("result_sha256") != digest:
                raise ReleaseError(f"the kept result of audit record {audit_id} does not match the audit log")
            if audited["snapshot_id"] != self.s.dataset.snapshot_id:
                raise ReleaseError(
                    f"the census changed since audit record {audit_id}; run the query again and save that result"
                )
            taken = [r for r in self.s.results.list(identity.user) if r["name"] == name]
            if taken:
                raise ReleaseError(
                    f"you already have a release named {name!r} ({taken[0]['id']}); names are unique "
                    "per user: choose another"
                )
            manifest = self._manifest(audited, payload, digest, name, notebook, parameters)
            if manifest["notebook"] is not None and notebook_sha256:
                manifest["notebook"]["sha256"] = str(notebook_sha256)  # as the client declared it
            manifest["files"] = {"result.json": hashlib.sha256(result_json(payload)).hexdigest()}
            manifest["receipt"] = self.s.audit.receipt(int(audit_id))  # the record is in the signed log
            manifest["signature"] = sign_manifest(self.s.audit.signer, manifest)  # the service vouches for the rest
            record.update(
                tables=audited["tables"],
                query_hash=audited["query_hash"],
                query=audited["query"],
                fields_returned=audited["fields_returned"],
                label=audited["label"],
            )
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        self.s.recorder.write(
            record,
            started,
            outcome="answered",
            reason=f"release {manifest['release_id']} ({name}) of audit record {audit_id}",
        )
        self.s.results.add(name=name, user=identity.user, audit_seq=int(audit_id), manifest=manifest)
        return {"manifest": manifest, "payload": payload}

    def releases(self, *, identity: Identity, everyone: bool = False) -> dict[str, Any]:
        """The caller's releases (``everyone``: all of them, for the data owner's tools)."""
        started = time.perf_counter()
        rows = self.s.results.list(None if everyone else identity.user)
        self.s.recorder.write(
            self.s.recorder.draft(identity, "releases"), started, outcome="answered", reason="metadata only"
        )
        return {"rows": rows}

    def release(self, *, identity: Identity, release_id: str) -> dict[str, Any]:
        """One release's manifest (metadata; any user may read how a release was made)."""
        started = time.perf_counter()
        record = self.s.recorder.draft(identity, "release show")
        found = self.s.results.get(str(release_id))
        if found is None:
            error = ReleaseError(
                f"no release {release_id!r}; list them with releases() in a notebook, or `safestats releases list`"
            )
            self.s.recorder.write(record, started, outcome="refused", reason=str(error))
            raise error
        self.s.recorder.write(record, started, outcome="answered", reason=f"manifest of {release_id}")
        return {"manifest": found["manifest"]}

    def reproduce(self, *, identity: Identity, release_id: str) -> dict[str, Any]:
        """Reproduce a release: sdc re-runs the query on the recorded snapshot and must give the
        identical table; dp returns the stored release (no new draw, no spend) and shows that
        query, snapshot and parameters match. Any change is reported, not re-run around."""
        started = time.perf_counter()
        record = self.s.recorder.draft(identity, "reproduce")
        try:
            found = self.s.results.get(str(release_id))
            if found is None:
                raise ReleaseError(
                    f"no release {release_id!r}; list them with releases() in a notebook, or `safestats releases list`"
                )
            release_id = found["id"]
            m = found["manifest"]
            query = Query.from_wire({k: v for k, v in m["query"].items() if k != "sql"})
            record.update(describe_query(query, m.get("sql")))
            ensure_allowed(identity, query, policy=self.s.policy, catalog=self.s.catalog)
            require_for_label(self.s, identity, str(m.get("label") or ""))  # a result comes back
            changes = self._changes(m)
            original = self.s.identity(
                m["user"],
                interaction="ad hoc",
                client={**identity.client, "reproducing": release_id, "requested_by": identity.user},
            )
            now = self.s.policy.disclosure_for(original).describe()
            then = {k: v for k, v in m["disclosure"].items() if k not in ("result_sha256", "output_check")}
            if now != then:
                changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
                changes.append(
                    f"the disclosure settings of {m['user']}'s groups changed: "
                    + ", ".join(f"{k} {then.get(k)!r} → {now.get(k)!r}" for k in changed)
                )
            if changes:
                raise ReleaseError(f"release {release_id} cannot be reproduced as it was made: " + "; ".join(changes))
        except UserError as e:
            self.s.recorder.write(record, started, outcome="refused", reason=str(e))
            raise
        if m["disclosure"]["mode"] == "dp":
            kept = self.s.results.result(int(m["audit"]["seq"]))
            if kept is None:
                raise ServiceError(f"the stored result of release {release_id} is missing; nothing was released")
            payload, how = kept[1], "the stored release (no new draw, no privacy spent)"
        else:
            payload = self.s.run_query(original, "reproduce", lambda: query, source=m.get("sql"))
            how = f"re-run on snapshot {self.s.dataset.snapshot_id[:12]} (audit record {payload['meta']['audit_id']})"
        identical = result_digest(payload) == m["result_sha256"]
        self.s.recorder.write(
            record,
            started,
            outcome="answered",
            reason=f"reproduced release {release_id}: {'identical' if identical else 'DIFFERENT'}",
        )
        return {
            "release_id": release_id,
            "mode": m["disclosure"]["mode"],
            "identical": identical,
            "how": how,
            "matches": {
                "query_hash": m["query_hash"],
                "snapshot_id": m["snapshot_id"],
                "catalog_sha256": m["catalog"]["sha256"],
                "disclosure": then,
            },
            "payload": payload,
        }

    def _manifest(
        self,
        audited: Mapping[str, Any],
        payload: Mapping[str, Any],
        digest: str,
        name: str,
        notebook: str | None,
        parameters: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        import platform
        from importlib.metadata import version

        from safestats.releases import new_release_id, sha256_file

        query = dict(audited["query"])
        meta = payload["meta"]
        return {
            "release_id": new_release_id(),
            "name": name,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "user": audited["user"],
            "dataset": audited["dataset"],
            "snapshot_id": audited["snapshot_id"],
            "input_files": {f: info["sha256"] for f, info in sorted(self.s.dataset.manifest["files"].items())},
            "generator": {
                k: self.s.dataset.manifest.get(k) for k in ("generator", "generator_version", "seed", "scale")
            },
            "catalog": {"file": Path(self.s.catalog.path).name, "sha256": sha256_file(Path(self.s.catalog.path))},
            "policy": {"file": Path(self.s.policy.path).name, "sha256": sha256_file(Path(self.s.policy.path))},
            "query": query,
            "query_hash": audited["query_hash"],
            "sql": query.get("sql"),
            "disclosure": {k: v for k, v in (audited.get("disclosure") or {}).items() if k != "output_check"},
            "privacy": audited.get("privacy"),
            "label": audited["label"],
            "marking": marking_text(meta["label"], meta.get("impact_level") or ""),
            "released_utc": audited["time_utc"],
            "audit": {"seq": audited["seq"], "record_hash": audited["record_hash"]},
            "software": {
                "safestats": __version__,
                "python": platform.python_version(),
                **{p: version(p) for p in ("opendp", "duckdb", "ibis-framework", "pandas", "scipy")},
            },
            "result_sha256": digest,
            "notebook": {"path": notebook, "parameters": dict(parameters or {})} if notebook else None,
        }

    def _changes(self, m: Mapping[str, Any]) -> list[str]:
        """What differs between the release's recorded inputs and the service's current ones."""
        from safestats.releases import sha256_file

        out = []
        if m["snapshot_id"] != self.s.dataset.snapshot_id:
            now = {f: info["sha256"] for f, info in self.s.dataset.manifest["files"].items()}
            then = m["input_files"]
            parts = [
                f"{f} changed (sha256 {then[f][:12]} → {now[f][:12]})"
                for f in sorted(then)
                if f in now and now[f] != then[f]
            ]
            parts += [f"{f} removed" for f in sorted(set(then) - set(now))]
            parts += [f"{f} added" for f in sorted(set(now) - set(then))]
            out.append(
                f"the census snapshot changed ({m['snapshot_id'][:12]} → {self.s.dataset.snapshot_id[:12]}): "
                + (", ".join(parts) or "same files, different snapshot")
            )
        catalog = sha256_file(Path(self.s.catalog.path))
        if catalog != m["catalog"]["sha256"]:
            out.append(
                f"the catalog changed ({m['catalog']['file']}: sha256 {m['catalog']['sha256'][:12]} → {catalog[:12]})"
            )
        return out


def sign_manifest(signer: Any, manifest: Mapping[str, Any]) -> dict[str, str] | None:
    """The service's Ed25519 signature over the manifest's canonical JSON (without this field)."""
    import base64
    import json

    from safestats.audit.heads import key_id

    if signer is None:
        return None
    text = json.dumps({k: v for k, v in manifest.items() if k != "signature"}, sort_keys=True, default=str)
    return {"key_id": key_id(signer.public), "ed25519": base64.b64encode(signer.sign_bytes(text.encode())).decode()}


def _release_name(name: Any) -> str:
    text = str(name or "").strip()
    if not text or len(text) > 120 or any(c in text for c in "/\\\0"):
        raise ReleaseError("a release needs a name of 1 to 120 characters without slashes")
    return text
