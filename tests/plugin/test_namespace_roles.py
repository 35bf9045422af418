"""Who owns a namespace role, and what a config change does to it: real `mlflow server
--app-name k8s-auth` processes restarted with new configs on one PostgreSQL auth database,
jobs as the real `mlflow` client with ServiceAccount tokens from the real API server, and
the admin through `get_app_client("k8s-auth", ...)`."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

from mlflow_k8s_auth import namespace_ownership
from mlflow_k8s_auth.client import NamespacePermission
from mlflow_k8s_auth.namespace_roles import ROLE_WORKSPACE, parked_role_name, role_name
from tests.plugin.cluster import PluginCluster
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, MlflowServer, Postgres, render_ini

pytestmark = pytest.mark.slow


@dataclass
class Site:
    """One auth + tracking database pair and the server (re)started on it."""

    cluster: PluginCluster
    workdir: Path
    kubeconfig: Path
    auth_db: Postgres
    tracking_db: Postgres
    monkeypatch: pytest.MonkeyPatch
    server: MlflowServer | None = None
    starts: int = 0

    def start(self, namespace_permissions: str) -> str:
        self.stop()
        self.starts += 1
        ini = render_ini(self.auth_db.uri, self.kubeconfig, namespace_permissions=namespace_permissions)
        self.server = MlflowServer(self.workdir / f"run-{self.starts}", ini, self.tracking_db.uri).start()
        return self.server.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            assert "Traceback" not in self.server.log()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def as_admin(self) -> None:
        self.monkeypatch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
        self.monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
        self.monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)

    def as_job(self, namespace: str, name: str) -> None:
        """The next requests carry a new token of `namespace:name`, as a job's would."""
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            self.monkeypatch.delenv(key, raising=False)
        path = self.workdir / f"token-{namespace}-{name}"
        path.write_text(self.cluster.token(namespace, name) + "\n")
        self.monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "k8s-token")
        self.monkeypatch.setenv("MLFLOW_K8S_TOKEN_PATH", str(path))

    def tag_status(self, experiment_id: str) -> int:
        """HTTP status of setting a tag (needs EDIT) with the current identity."""
        try:
            MlflowClient(self.url).set_experiment_tag(experiment_id, "k", "v")
        except MlflowException as exc:
            return exc.get_http_status_code()
        return 200

    def roles(self, name: str) -> list[tuple[object, ...]]:
        return self.auth_db.query("SELECT id, description FROM roles WHERE name = %s", (name,))


@pytest.fixture
def site(cluster: PluginCluster, tmp_path: Path, fresh_databases: Callable[[], Postgres],
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a 503 must show, not be retried
    kubeconfig = cluster.server_kubeconfig(tmp_path / "kubeconfig", cluster.namespace("server"))
    state = Site(cluster, tmp_path, kubeconfig, fresh_databases(), fresh_databases(), monkeypatch)
    try:
        yield state
    finally:
        state.stop()


def refused(action: Callable[[], object]) -> MlflowException:
    with pytest.raises(MlflowException) as caught:
        action()
    assert caught.value.get_http_status_code() == 400, caught.value.message
    assert "namespace_permissions" in caught.value.message
    return caught.value


def test_config_removal_revokes_and_gives_the_admin_role_back(cluster: PluginCluster, site: Site) -> None:
    team_a, jobs = cluster.namespace("team-a"), cluster.namespace("jobs")
    site.start(f"{team_a}:EDIT")
    site.as_admin()
    experiment_id = MlflowClient(site.url).create_experiment("owned-by-admin")
    admin = get_app_client("k8s-auth", tracking_uri=site.url)
    admin.set_namespace_permission(jobs, "READ")

    # The config names `jobs` too: it wins while it does; the admin's role is set aside.
    site.start(f"{team_a}:EDIT, {jobs}:MANAGE")
    site.as_job(jobs, "trainer")
    assert site.tag_status(experiment_id) == 200
    site.as_admin()
    admin = get_app_client("k8s-auth", tracking_uri=site.url)
    assert admin.list_namespace_permissions() == {
        team_a: NamespacePermission("EDIT", "config"), jobs: NamespacePermission("MANAGE", "config")}
    message = refused(lambda: admin.set_namespace_permission(jobs, "EDIT")).message
    assert jobs in message
    refused(lambda: admin.remove_namespace_permission(jobs))  # the server's 400, through the client
    assert len(site.roles(parked_role_name(jobs))) == 1

    # The config drops `jobs`: its MANAGE is revoked, the admin's READ is back.
    site.start(f"{team_a}:EDIT")
    site.as_job(jobs, "trainer")
    with pytest.raises(MlflowException) as denied:
        MlflowClient(site.url).delete_experiment(experiment_id)
    assert denied.value.get_http_status_code() == 403
    assert site.tag_status(experiment_id) == 403
    site.as_admin()
    admin = get_app_client("k8s-auth", tracking_uri=site.url)
    assert admin.list_namespace_permissions() == {
        team_a: NamespacePermission("EDIT", "config"), jobs: NamespacePermission("READ", "admin")}
    assert site.roles(parked_role_name(jobs)) == []
    assert MlflowClient(site.url).get_experiment(experiment_id).lifecycle_stage == "active"

    # An admin-owned role is the admin's again: the client changes and removes it.
    admin.set_namespace_permission(jobs, "EDIT")
    site.as_job(jobs, "trainer")
    assert site.tag_status(experiment_id) == 200
    site.as_admin()
    admin.remove_namespace_permission(jobs)
    assert jobs not in admin.list_namespace_permissions()

    # The config drops its last namespace: the role it made is gone, with its grants.
    site.as_job(team_a, "writer")
    assert site.tag_status(experiment_id) == 200
    site.start("")
    site.as_job(team_a, "writer")
    assert site.tag_status(experiment_id) == 403
    assert site.roles(role_name(team_a)) == []
    site.as_admin()
    assert get_app_client("k8s-auth", tracking_uri=site.url).list_namespace_permissions() == {}


def test_vanished_config_role_is_made_again_and_cannot_be_deleted_through_the_api(
    cluster: PluginCluster, site: Site
) -> None:
    jobs = cluster.namespace("jobs")
    site.start(f"{jobs}:EDIT")
    site.as_admin()
    experiment_id = MlflowClient(site.url).create_experiment("shared")
    site.as_job(jobs, "first")
    assert site.tag_status(experiment_id) == 200

    # Any client gets the server's 400, and the role stays.
    site.as_admin()
    error = refused(lambda: get_app_client("k8s-auth", tracking_uri=site.url).remove_namespace_permission(jobs))
    assert error.error_code == "INVALID_PARAMETER_VALUE"
    [(role_id, _)] = site.roles(role_name(jobs))
    raw = requests.delete(f"{site.url}/api/3.0/mlflow/roles/delete", json={"role_id": role_id},
                          auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=30)
    assert raw.status_code == 400
    assert raw.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "spec.auth.namespacePermissions" in raw.json()["message"]
    job = requests.delete(f"{site.url}/api/3.0/mlflow/roles/delete", json={"role_id": role_id},
                          headers={"Authorization": f"Bearer {cluster.token(jobs, 'first')}"}, timeout=30)
    assert job.status_code == 403  # MLflow's own refusal comes first for non-admins
    assert len(site.roles(role_name(jobs))) == 1

    # The role vanishes behind the server's back (by hand in the database): the next new
    # token of the namespace gets the role made again, not a 503.
    site.auth_db.query(
        "WITH a AS (DELETE FROM user_role_assignments WHERE role_id = %s), "
        "p AS (DELETE FROM role_permissions WHERE role_id = %s) "
        "DELETE FROM roles WHERE id = %s RETURNING id", (role_id, role_id, role_id))
    assert site.roles(role_name(jobs)) == []
    for name in ("second", "third"):
        site.as_job(jobs, name)
        assert site.tag_status(experiment_id) == 200
    [(new_id, description)] = site.roles(role_name(jobs))
    assert new_id != role_id and "namespace_permissions" in str(description)


def test_concurrent_take_over_and_release_on_postgres(fresh_databases: Callable[[], Postgres]) -> None:
    """Replicas and workers starting together (two engines, eight threads) park the admin's
    role once, make one config role, and later give the admin's role back once."""
    db = fresh_databases()
    stores = [SqlAlchemyStore(), SqlAlchemyStore()]
    for store in stores:
        store.init_db(db.uri)
    admin_role = stores[0].create_role(role_name("jobs"), ROLE_WORKSPACE, description="made by hand")
    stores[0].add_role_permission(admin_role.id, "experiment", "*", "READ")
    users = [stores[0].create_user(f"system:serviceaccount:jobs:sa-{i}", "x" * 12) for i in range(3)]
    for user in users:
        stores[0].assign_role_to_user(user.id, admin_role.id)

    def run_everywhere(config: dict[str, str]) -> None:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: namespace_ownership.reconcile(stores[i % 2], config), range(8)))

    run_everywhere({"jobs": "MANAGE"})
    rows = db.query("SELECT name, description FROM roles ORDER BY name")
    assert [name for name, _ in rows] == [role_name("jobs"), parked_role_name("jobs")]
    config_role = stores[0].get_role_by_name(ROLE_WORKSPACE, role_name("jobs"))
    assert {p.permission for p in stores[0].list_role_permissions(config_role.id)} == {"MANAGE"}
    assert db.query("SELECT count(*) FROM user_role_assignments") == [(0,)]  # parked: no members

    run_everywhere({})
    assert db.query("SELECT id, name FROM roles") == [(admin_role.id, role_name("jobs"))]
    assert [(p.resource_type, p.permission) for p in stores[0].list_role_permissions(admin_role.id)] == [
        ("experiment", "READ")]
    members = db.query("SELECT user_id FROM user_role_assignments WHERE role_id = %s", (admin_role.id,))
    assert sorted(m for (m,) in members) == sorted(u.id for u in users)
