"""AccessStore: identities, grants, keys, authentication and authorisation, on both backends."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from bastion.access import AccessStore, Principal, Role
from bastion.access.db import ApiKeyRow
from bastion.errors import AccessDenied, AuthenticationError, ConfigurationError, InputError


def _entries(store: AccessStore, action: str) -> list[tuple[str, str | None, str]]:
    store.flush_audit()
    return [(e.actor, e.resource, e.outcome) for e in store.audit.entries()
            if e.action == action]


def test_key_round_trip_and_scope(store: AccessStore) -> None:
    key = store.create_key("app", resources=["model:fraud"], actor="root")
    assert key.token.startswith(f"bst_{key.key_id}_")
    who = store.authenticate(key.token)
    assert who == Principal("app", "service", key.key_id, frozenset({"predict"}),
                            frozenset({"model:fraud"}))
    store.authorise(who, "predict", "model:fraud")
    with pytest.raises(AccessDenied, match="covers only model:fraud"):
        store.authorise(who, "predict", "model:churn")
    with pytest.raises(AccessDenied, match="scoped to predict only"):
        store.authorise(who, "read", "model:fraud")


def test_key_scope_narrower_than_grants_is_enforced(store: AccessStore) -> None:
    # dana may predict/read/push on every model; her key only predicts on model:a
    key = store.create_key("dana", scopes=["predict"], resources=["model:a"], actor="root")
    who = store.authenticate(key.token)
    store.authorise(who, "predict", "model:a")
    with pytest.raises(AccessDenied):
        store.authorise(who, "predict", "model:b")
    with pytest.raises(AccessDenied):
        store.authorise(who, "push", "model:a")
    # acting directly (no key), dana has all of her grants
    direct = store.principal("dana")
    store.authorise(direct, "push", "model:b")
    store.authorise(direct, "write_data", "dataset:credit")
    with pytest.raises(AccessDenied, match="no role of 'dana'"):
        store.authorise(direct, "write_data", "dataset:other")


def test_grants_narrower_than_key_are_enforced(store: AccessStore) -> None:
    key = store.create_key("dana", scopes=["predict", "push"], resources=["*"], actor="root")
    who = store.authenticate(key.token)
    store.authorise(who, "push", "model:x")
    # the key says "*" but dana holds nothing on datasets other than credit, nor global rights
    with pytest.raises(AccessDenied, match="no role of 'dana' allows push on dataset:other"):
        store.authorise(who, "push", "dataset:other")
    with pytest.raises(AccessDenied):
        store.authorise(who, "push", "*")
    # revoking the grant later takes the right away from the existing key (cache_ttl=0)
    store.revoke_grant("dana", "data_scientist", "model:*", actor="root")
    with pytest.raises(AccessDenied):
        store.authorise(who, "push", "model:x")


def test_create_key_cannot_exceed_owner_grants(store: AccessStore) -> None:
    with pytest.raises(AccessDenied, match="cannot have scope 'manage_keys'"):
        store.create_key("app", scopes=["manage_keys"], actor="root")
    with pytest.raises(AccessDenied, match="cannot cover resource 'dataset:credit'"):
        store.create_key("app", resources=["dataset:credit"], actor="root")
    with pytest.raises(ConfigurationError, match="unknown action"):
        store.create_key("app", scopes=["fly"], actor="root")
    with pytest.raises(ConfigurationError, match="unknown identity"):
        store.create_key("nobody", actor="root")
    with pytest.raises(ConfigurationError, match="bad resource"):
        store.create_key("app", resources=["model:../etc"], actor="root")
    assert store.list_keys() == []
    refused = _entries(store, "create_key")
    assert len(refused) == 5 and {o for _, _, o in refused} == {"refused"}


def test_role_table_decisions(store: AccessStore) -> None:
    app, eve, root = store.principal("app"), store.principal("eve"), store.principal("root")
    with pytest.raises(AccessDenied):
        store.authorise(app, "manage_keys", "*")  # consumer cannot manage keys
    store.authorise(eve, "read_audit", "*")  # auditor reads the audit log
    with pytest.raises(AccessDenied):
        store.authorise(eve, "predict", "model:fraud")  # ... but cannot predict
    for action in ("manage_keys", "manage_users", "predict", "promote"):
        store.authorise(root, action, "*" if action.startswith("manage") else "model:any")
    with pytest.raises(ConfigurationError, match="unknown action"):
        store.authorise(root, "fly", "*")
    with pytest.raises(InputError, match="bad resource"):
        store.authorise(root, "predict", "model:a b")


def test_expired_key_is_refused(store: AccessStore) -> None:
    key = store.create_key("app", expires_in=dt.timedelta(days=1), actor="root")
    store.authenticate(key.token)
    with store.audit.transaction() as s:  # move the expiry into the past
        s.execute(update(ApiKeyRow).where(ApiKeyRow.key_id == key.key_id)
                  .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    with pytest.raises(AuthenticationError, match="expired"):
        store.authenticate(key.token)
    [info] = store.list_keys("app")
    assert info.status() == "expired"


def test_expiry_is_checked_on_cached_keys(make_store: Callable[..., AccessStore]) -> None:
    store = make_store(cache_ttl=3600)
    store.add_identity("a", actor="t")
    store.grant("a", "consumer", actor="t")
    key = store.create_key("a", expires_in=dt.timedelta(seconds=1), actor="t")
    store.authenticate(key.token)  # now cached for an hour
    time.sleep(1.1)
    with pytest.raises(AuthenticationError, match="expired"):
        store.authenticate(key.token)


def test_revoked_key_is_refused(make_store: Callable[..., AccessStore]) -> None:
    admin, gateway = make_store(), make_store(cache_ttl=0)
    admin.add_identity("a", actor="t")
    admin.grant("a", "consumer", actor="t")
    key = admin.create_key("a", actor="t")
    gateway.authenticate(key.token)
    admin.revoke_key(key.key_id, actor="t")
    with pytest.raises(AuthenticationError, match="revoked"):
        gateway.authenticate(key.token)
    admin.revoke_key(key.key_id, actor="t")  # idempotent
    assert [k.status() for k in admin.list_keys()] == ["revoked"]


def test_revocation_reaches_other_processes_within_cache_ttl(
        make_store: Callable[..., AccessStore]) -> None:
    admin, gateway = make_store(), make_store(cache_ttl=0.3)
    admin.add_identity("a", actor="t")
    admin.grant("a", "consumer", actor="t")
    key = admin.create_key("a", actor="t")
    gateway.authenticate(key.token)
    admin.revoke_key(key.key_id, actor="t")
    gateway.authenticate(key.token)  # still cached: the documented window
    time.sleep(0.35)
    with pytest.raises(AuthenticationError, match="revoked"):
        gateway.authenticate(key.token)
    # in the revoking process the cache is dropped at once
    own = make_store(cache_ttl=3600)
    key2 = own.create_key("a", actor="t")
    own.authenticate(key2.token)
    own.revoke_key(key2.key_id, actor="t")
    with pytest.raises(AuthenticationError, match="revoked"):
        own.authenticate(key2.token)


@pytest.mark.parametrize("token,message", [
    (None, "no API key"),
    ("", "no API key"),
    ("Bearer xyz", "must start with 'bst_'"),
    ("bst_zz_" + "a" * 43, "16 hexadecimal"),
    ("bst_0123456789abcdef", "43 URL-safe"),
    ("bst_0123456789abcdef_short-SECRET", "43 URL-safe"),
    ("bst_0123456789abcdef_" + "S3CRET" * 7 + "x", "unknown or wrong"),
    ("bst_" + "x" * 300, "too long"),
])
def test_bad_tokens(tmp_path: Path, token: str | None, message: str) -> None:
    # parsing does not depend on the backend: SQLite only
    with (AccessStore(f"sqlite:///{tmp_path / 'a.db'}", cache_ttl=0) as store,
          pytest.raises(AuthenticationError, match=message) as info):
        store.authenticate(token)
    assert "SECRET" not in str(info.value) and "S3CRET" not in str(info.value)


def test_wrong_secret_for_a_real_key_id(store: AccessStore) -> None:
    key = store.create_key("app", actor="root")
    forged = f"bst_{key.key_id}_{'A' * 43}"
    with pytest.raises(AuthenticationError, match="unknown or wrong") as info:
        store.authenticate(forged)
    assert "A" * 43 not in str(info.value)
    fails = _entries(store, "authenticate")
    assert fails[-1] == ("anonymous", None, "fail")
    assert "A" * 43 not in str(store.audit.entries(limit=1)[0].details)


def test_list_keys_never_shows_secrets(store: AccessStore) -> None:
    key = store.create_key("app", label="ci", actor="root")
    [info] = store.list_keys()
    assert (info.key_id, info.owner, info.scopes, info.label) == (key.key_id, "app",
                                                                  ("predict",), "ci")
    secret = key.token.split("_", 2)[2]
    assert secret not in repr(info) and secret not in repr(store.list_keys("app"))
    assert secret not in repr(key)
    assert info.expires_at is not None
    assert dt.timedelta(days=89) < info.expires_at - info.created_at <= dt.timedelta(days=90)
    assert store.list_keys("root") == []


def test_every_decision_is_audited(store: AccessStore) -> None:
    key = store.create_key("app", actor="root")
    who = store.authenticate(key.token)
    store.authorise(who, "predict", "model:fraud")
    with pytest.raises(AccessDenied):
        store.authorise(who, "predict", "model:other")
    with pytest.raises(AuthenticationError):
        store.authenticate("bst_bad")
    store.revoke_key(key.key_id, actor="root")
    store.flush_audit()
    seen = [(e.actor, e.action, e.resource, e.outcome) for e in store.audit.entries()]
    assert ("root", "grant", "model:fraud", "ok") in seen
    assert ("root", "create_key", None, "ok") in seen
    assert ("app", "authenticate", None, "ok") in seen
    assert ("app", "predict", "model:fraud", "allow") in seen
    assert ("app", "predict", "model:other", "deny") in seen
    assert ("anonymous", "authenticate", None, "fail") in seen
    assert seen[-1] == ("root", "revoke_key", None, "ok")
    assert store.audit.verify().ok


def test_audit_denied_keeps_only_failures(make_store: Callable[..., AccessStore]) -> None:
    s = make_store(audit_decisions="denied")
    s.add_identity("a", actor="t")
    s.grant("a", "consumer", actor="t")
    who = s.authenticate(s.create_key("a", actor="t").token)
    s.authorise(who, "predict", "model:m")
    with pytest.raises(AccessDenied):
        s.authorise(who, "push", "model:m")
    s.flush_audit()
    assert [(e.action, e.outcome) for e in s.audit.entries()][-2:] == [("create_key", "ok"),
                                                                      ("push", "deny")]


def test_audit_none_keeps_only_admin_actions(make_store: Callable[..., AccessStore]) -> None:
    s = make_store(audit_decisions="none")
    s.add_identity("a", actor="t")
    s.grant("a", "consumer", actor="t")
    who = s.authenticate(s.create_key("a", actor="t").token)
    with pytest.raises(AccessDenied):
        s.authorise(who, "push", "model:m")
    with pytest.raises(AuthenticationError):
        s.authenticate("bst_0000000000000000_" + "x" * 43)
    s.flush_audit()
    assert [e.action for e in s.audit.entries()][-3:] == ["add_identity", "grant", "create_key"]
    with pytest.raises(ConfigurationError, match="audit_decisions"):
        make_store(audit_decisions="some")


def test_identities_and_grants(store: AccessStore) -> None:
    with pytest.raises(ConfigurationError, match="already exists"):
        store.add_identity("app", actor="root")
    with pytest.raises(ConfigurationError, match="kind"):
        store.add_identity("x", kind="robot", actor="root")
    with pytest.raises(ConfigurationError, match="bad identity name"):
        store.add_identity("a b", actor="root")
    with pytest.raises(ConfigurationError, match="unknown role"):
        store.grant("app", "superuser", actor="root")
    with pytest.raises(ConfigurationError, match="has no grant"):
        store.revoke_grant("app", "admin", actor="root")
    store.grant("app", Role.CONSUMER, "model:fraud", actor="root")  # idempotent
    people = {i.name: i for i in store.list_identities()}
    assert set(people) == {"root", "app", "eve", "dana"}
    assert people["app"].kind == "service"
    assert [(g.role, g.resource) for g in people["dana"].grants] == [
        (Role.DATA_SCIENTIST, "model:*"), (Role.DATA_SCIENTIST, "dataset:credit")]


def test_remove_identity_revokes_its_keys(store: AccessStore) -> None:
    key = store.create_key("app", actor="root")
    store.remove_identity("app", actor="root")
    with pytest.raises(AuthenticationError, match="revoked"):
        store.authenticate(key.token)
    assert "app" not in {i.name for i in store.list_identities()}
    with pytest.raises(ConfigurationError, match="unknown identity"):
        store.principal("app")


def test_constructor_validation() -> None:
    with pytest.raises(ConfigurationError, match="cache_ttl"):
        AccessStore("sqlite://", cache_ttl=-1)
    with pytest.raises(ConfigurationError, match="in-memory SQLite"):
        AccessStore("sqlite://")
    with pytest.raises(ConfigurationError, match="not supported"):
        AccessStore("mysql://x/y")


def test_database_errors_are_translated(tmp_path: Path) -> None:
    from sqlalchemy import text

    from bastion.errors import BastionError

    with pytest.raises(ConfigurationError, match="cannot open the access database"):
        AccessStore("postgresql+psycopg://nobody@127.0.0.1:9/none")
    with AccessStore(f"sqlite:///{tmp_path / 'a.db'}", cache_ttl=0) as store:
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE bastion_access_keys"))
        with pytest.raises(BastionError, match=r"access database error: .*no such table"):
            store.authenticate("bst_0123456789abcdef_" + "a" * 43)
        with pytest.raises(BastionError, match="access database error"):
            store.list_keys()


def test_concurrent_decisions_keep_the_log_complete_and_valid(
        make_store: Callable[..., AccessStore]) -> None:
    import threading

    store = make_store(cache_ttl=5.0, audit_batch=16, audit_interval=0.01)
    store.add_identity("a", actor="t")
    store.grant("a", "consumer", "model:m", actor="t")
    tokens = [store.create_key("a", actor="t").token for _ in range(3)]
    errors: list[BaseException] = []

    def work(token: str) -> None:
        try:
            for _ in range(40):
                who = store.authenticate(token)
                store.authorise(who, "predict", "model:m")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    store.add_identity("b", actor="t")  # an admin write while decisions are queued
    for t in threads:
        t.join()
    store.flush_audit()
    assert errors == []
    entries = store.audit.entries()
    assert sum(e.action == "authenticate" for e in entries) == 120
    assert sum(e.action == "predict" and e.outcome == "allow" for e in entries) == 120
    assert store.audit.verify().ok
