"""JIT provisioning against MLflow's real auth store (SQLite and PostgreSQL)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

from mlflow_k8s_auth.namespace_roles import ROLE_WORKSPACE, role_name
from mlflow_k8s_auth.policy import Grant
from mlflow_k8s_auth.users import UserProvisioner
from tests.plugin.conftest import Postgres

USER = "system:serviceaccount:team:trainer"


def store_for(uri: str) -> SqlAlchemyStore:
    store = SqlAlchemyStore()
    store.init_db(uri)
    return store


def grant(is_admin: bool = False, permission: str | None = None, username: str = USER) -> Grant:
    return Grant(username=username, namespace="team", is_admin=is_admin, namespace_permission=permission)


def role_permissions(store: SqlAlchemyStore, username: str) -> dict[str, set[str]]:
    user = store.get_user(username)
    return {
        role.name: {p.permission for p in store.list_role_permissions(role.id)}
        for role in store.list_user_roles(user.id)
    }


def test_admin_flag_follows_config(tmp_path: Path) -> None:
    store = store_for(f"sqlite:///{tmp_path}/auth.db")
    provisioner = UserProvisioner(store)
    provisioner.sync(grant(is_admin=True))
    assert store.get_user(USER).is_admin
    assert not store.authenticate_user(USER, "")  # random password: no Basic login
    UserProvisioner(store).sync(grant(is_admin=False))  # e.g. a restarted server, SA demoted
    assert not store.get_user(USER).is_admin


def test_namespace_role_follows_config(tmp_path: Path) -> None:
    store = store_for(f"sqlite:///{tmp_path}/auth.db")
    UserProvisioner(store).sync(grant(permission="EDIT"))
    assert role_permissions(store, USER) == {role_name("team"): {"EDIT"}}
    UserProvisioner(store).sync(grant(permission="NO_PERMISSIONS"))
    assert role_permissions(store, USER) == {role_name("team"): {"DENY"}}
    UserProvisioner(store).sync(grant(permission=None))  # namespace removed from the config
    assert role_permissions(store, USER) == {}
    # The config made the role and no longer names the namespace: the role is gone with its grants.
    assert not [r for r in store.list_roles([ROLE_WORKSPACE]) if r.name == role_name("team")]


@pytest.mark.slow
def test_concurrent_provisioning_across_stores_on_postgres(fresh_databases: Callable[[], Postgres]) -> None:
    db = fresh_databases()
    stores = [store_for(db.uri), store_for(db.uri)]  # two "processes" with their own engines
    provisioners = [UserProvisioner(s) for s in stores]
    users = [f"system:serviceaccount:team:sa-{i}" for i in range(10)]
    jobs = [(provisioners[i % 2], u) for u in users for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda job: job[0].sync(grant(permission="READ", username=job[1])), jobs))
    rows = db.query("SELECT username, count(*) FROM users GROUP BY username")
    assert sorted(rows) == sorted((u, 1) for u in users)
    assignments = db.query("SELECT count(*) FROM user_role_assignments")
    assert assignments == [(10,)]
