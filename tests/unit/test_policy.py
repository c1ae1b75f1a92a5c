from __future__ import annotations

import pytest
import yaml

from safestats.access.policy import DEFAULT_POLICY, ensure_allowed, load_policy
from safestats.errors import AccessDenied, ConfigError, UnknownUser
from safestats.query.model import Aggregate, Filter, Query

RESTRICTED = ["Nationality", "PupilOnRoll_Unrestricted", "PupilNoLongerOnRoll_Unrestricted"]


def q(table, **kw):
    return Query(table=table, aggregates=kw.pop("aggregates", (Aggregate("count"),)), **kw)


def test_seed_case_main_group_reads_pupil_tables_only(policy, catalog):
    who = policy.identity("demo.analyst")
    assert who.groups == ("I_STORE_SC_USERS",)
    for table in ["PupilOnRoll", "PupilNoLongerOnRoll"]:
        ensure_allowed(who, q(table), policy=policy, catalog=catalog)
    for table in RESTRICTED:
        with pytest.raises(AccessDenied, match=f"may not read table {table}"):
            ensure_allowed(who, q(table), policy=policy, catalog=catalog)
    with pytest.raises(AccessDenied, match="Nationality"):
        ensure_allowed(who, q("PupilOnRoll", join="Nationality"), policy=policy, catalog=catalog)


def test_unrestricted_group_reads_everything(policy, catalog):
    who = policy.identity("demo.unrestricted")
    for table in ["PupilOnRoll", "PupilNoLongerOnRoll", *RESTRICTED]:
        ensure_allowed(who, q(table), policy=policy, catalog=catalog)


def test_column_grants_deny_other_columns(policy, catalog):
    who = policy.identity("demo.researcher")
    ensure_allowed(who, q("PupilOnRoll", group_by=("la_code",)), policy=policy, catalog=catalog)
    with pytest.raises(AccessDenied, match="may not read column.* ethnicity"):
        ensure_allowed(who, q("PupilOnRoll", group_by=("ethnicity",)), policy=policy, catalog=catalog)
    with pytest.raises(AccessDenied, match="sen_provision"):
        ensure_allowed(
            who, q("PupilOnRoll", filters=(Filter("sen_provision", "==", "E"),)), policy=policy, catalog=catalog
        )


def test_service_identity_is_always_scheduled(policy):
    assert policy.identity("quality.reports", interaction="manual").interaction == "scheduled"
    assert policy.identity("demo.analyst", interaction="ad hoc").interaction == "ad hoc"


def test_unknown_user(policy):
    with pytest.raises(UnknownUser, match="'mallory' is not in the access policy"):
        policy.identity("mallory")


def test_members_of_the_restricted_group(policy):
    assert policy.members("I_STORE_SC_UNRESTRICTED_USERS") == ["demo.unrestricted"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["groups"]["I_STORE_SC_USERS"]["grants"].update(Secrets="all"), "grants unknown table 'Secrets'"),
        (lambda r: r["groups"]["RESEARCHERS"]["grants"].update(PupilOnRoll=["shoe"]), "unknown columns"),
        (lambda r: r["users"]["demo.analyst"].update(groups=["NOPE"]), "unknown group 'NOPE'"),
        (lambda r: r["users"]["demo.analyst"].update(organisation="ACME"), "unknown organisation"),
        (lambda r: r["groups"]["RESEARCHERS"].update(disclosure={"mode": "magic"}), "disclosure mode 'magic'"),
        (
            lambda r: r["groups"]["SC_OFFICIAL_STATISTICS"].update(disclosure={"mode": "sdc", "threshold": 0}),
            "threshold must be",
        ),
        (lambda r: r["groups"]["RESEARCHERS"].update(disclosure={"mode": "dp", "epsilon": "-1"}), "must be positive"),
        (lambda r: r["groups"]["RESEARCHERS"].update(disclosure={"mode": "dp", "noise": "uniform"}), "noise 'uniform'"),
        (lambda r: r["groups"]["RESEARCHERS"].update(disclosure={"mode": "dp", "period": "decade"}), "budget period"),
    ],
)
def test_bad_policy_files_are_clear(tmp_path, catalog, mutate, message):
    raw = yaml.safe_load(DEFAULT_POLICY.read_text())
    mutate(raw)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message) as e:
        load_policy(path, catalog=catalog)
    assert str(path) in str(e.value)
