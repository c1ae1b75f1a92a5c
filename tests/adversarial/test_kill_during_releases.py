"""kill -9 of the service in the middle of a stream of releases (SQLite and PostgreSQL): one
release is one transaction, so afterwards no reservation is stuck (the restarted service
charges any it finds, each with its own audit record), every spend is explained by a record,
every answer a client received has its record and kept result, and the log verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from safestats.config import Settings
from safestats.service.pipeline import Service
from safestats.store.ledger import unexplained_spends

WORKER = textwrap.dedent("""
    import sys, itertools
    from safestats.config import Settings
    from safestats.service.pipeline import Service
    settings = Settings.load({}, data_dir=sys.argv[1], store_url=sys.argv[2], output_checking_dir=sys.argv[3],
                             secret_key_file=sys.argv[4], signing_key_file=sys.argv[5])
    service = Service(settings)
    who = service.identity("demo.analyst")
    for i in itertools.count():
        eps = f"1/{1000 + int(sys.argv[6]) * 1000 + i}"  # a new query each time: no cached answers
        wire = {"v": 1, "table": "PupilOnRoll", "filters": [["term", "==", "2017-spring"]], "group_by": ["phase"],
                "aggregates": [["count", None, None, "count"]], "epsilon": eps}
        payload = service.query(wire, identity=who)
        print(payload["meta"]["audit_id"], flush=True)
""")


def test_kill_9_in_a_stream_of_releases_leaves_nothing_unexplained(any_store_url, sample_dir, tmp_path):
    args = [
        str(sample_dir),
        any_store_url,
        str(tmp_path / "o"),
        str(tmp_path / "secret.key"),
        str(tmp_path / "signing.key"),
    ]
    received: list[int] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFESTATS_")}
    for kill in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, *args, str(kill)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # wait for the first answer, then let a few more go
        assert first.strip(), "the worker did not answer"
        received.append(int(first))
        time.sleep(0.3 + 0.2 * kill)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        received += [int(x) for x in out.split()]
    from safestats.store.db import open_store
    from safestats.store.ledger import Ledger

    left = [x for x in Ledger(open_store(any_store_url)).spends() if x["status"] == "reserved"]
    print(f"reservations left by the kills: {len(left)}")
    settings = Settings.load(
        {},
        data_dir=sample_dir,
        store_url=any_store_url,
        output_checking_dir=args[2],
        secret_key_file=args[3],
        signing_key_file=args[4],
        settle_after_s=0,
    )
    service = Service(settings)  # the restart settles what the kills left reserved
    spends = service.ledger.spends()
    assert spends and not [s for s in spends if s["status"] == "reserved"]
    records = list(service.audit.records())
    assert unexplained_spends(service.ledger, records) == []
    by_seq = {r["seq"]: r for r in records}
    for seq in received:  # every answer the client got has its record and its kept result
        assert by_seq[seq]["outcome"] == "released" and service.results.result(seq) is not None
    assert service.audit.verify().ok
    settled = [r for r in records if r["operation"] == "budget settle"]
    assert all(r["privacy"]["settled"] for r in settled)


@pytest.mark.parametrize("failing", ["keep", "cache"])
def test_a_store_failure_inside_the_release_records_nothing_and_releases_nothing(
    connect, store_url, failing, monkeypatch
):
    """A failure at any step of the release transaction rolls back the record with it; the spend
    stands (noise was drawn) with a record explaining it, and the caller gets a clear error."""
    import safestats as ss
    from safestats.audit.log import AuditLog
    from safestats.store.cache import ReleaseCache
    from safestats.store.releases import ReleaseStore

    s = connect("demo.analyst")
    before = AuditLog.open(store_url).count()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(
        ReleaseStore if failing == "keep" else ReleaseCache, "keep" if failing == "keep" else "put", boom
    )
    with pytest.raises(ss.AuditFailure, match="nothing was released"):
        s.table("PupilOnRoll").where(term="2017-spring").group_by("sex").count().run()
    log = AuditLog.open(store_url)
    records = list(log.records())[before:]
    assert [r["operation"] for r in records] == ["budget settle"]  # no release record; the spend explained
    settings = Settings.load(
        {},
        data_dir=s._transport._service.settings.data_dir,
        store_url=store_url,
        output_checking_dir=s._transport._service.settings.output_checking_dir,
    )
    service = Service(settings)
    assert unexplained_spends(service.ledger, list(service.audit.records())) == []
    assert not [x for x in service.ledger.spends() if x["status"] == "reserved"]
