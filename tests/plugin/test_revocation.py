"""Fresh revocation: a permission change reaches every worker of every replica within 1 s.

Two replicas (`mlflow server --app-name k8s-auth`, 2 uvicorn workers each) share one fresh
PostgreSQL auth database, with the permission cache on (its default, 30 s) and the token
cache warm. A ServiceAccount (real token from the TokenRequest API) gets a permission,
which is then revoked through MLflow's permission API, the k8s-auth client, a role
assignment and the admin flag. Requests on new connections hammer both replicas (so every
worker serves some) from before the revoking call until well after it; the latency is the
time from the call's return to the start of the last request that still got 200. Each
worker's last read of the change counter (a per-pid metric) shows that all four read it.

Also: `token_cache_ttl_seconds = 0` makes a deleted ServiceAccount lose access as soon as
kube-apiserver itself stops accepting its token (its own ~10 s cache), while the default
cache keeps it working.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.server import get_app_client

from mlflow_k8s_auth import permission_cache, revocation
from mlflow_k8s_auth.cache import ReviewCache
from mlflow_k8s_auth.namespace_roles import role_name
from mlflow_k8s_auth.outcomes import Reviewed
from tests.plugin.cluster import API_AUTH_CACHE_SECONDS, PluginCluster, wait_for
from tests.plugin.conftest import ADMIN_PASSWORD, ADMIN_USER, MlflowServer, Postgres, render_ini

pytestmark = pytest.mark.slow

LIMIT_SECONDS = 1.0
POLL_THREADS = 8
# Polling continues this long after the revoking call returned.
WINDOW_SECONDS = 3.0
_SEEN = re.compile(r'^mlflow_k8s_auth_permission_version_seen\{[^}]*pid="(\d+)"[^}]*\} ([0-9.e+]+)$', re.M)


@dataclass
class Fleet:
    cluster: PluginCluster
    auth_db: Postgres
    replicas: list[MlflowServer]
    namespace: str
    token: str
    username: str
    experiment_id: str
    latencies: dict[str, float] = field(default_factory=dict)

    def status(self, url: str) -> int:
        # A new connection per request: the kernel hands them to both workers.
        response = requests.get(f"{url}/api/2.0/mlflow/experiments/get",
                                params={"experiment_id": self.experiment_id},
                                headers={"Authorization": f"Bearer {self.token}", "Connection": "close"},
                                timeout=30)
        return response.status_code

    def everywhere(self, wanted: int, rounds: int = 40) -> bool:
        return all(self.status(replica.url) == wanted for _ in range(rounds) for replica in self.replicas)

    def version(self) -> int:
        return int(self.auth_db.query("SELECT version FROM k8s_auth_change_counter")[0][0])

    def workers_seen(self, replica: MlflowServer) -> dict[str, int]:
        response = requests.get(f"{replica.url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD), timeout=10)
        assert response.status_code == 200, response.text
        return {pid: int(float(value)) for pid, value in _SEEN.findall(response.text)}


@dataclass
class Sample:
    started: float
    replica: int
    status: int


def _poll(fleet: Fleet, stop: threading.Event, samples: list[Sample], index: int) -> None:
    n = index
    while not stop.is_set():
        replica = n % len(fleet.replicas)
        n += 1
        started = time.monotonic()
        try:
            status = fleet.status(fleet.replicas[replica].url)
        except requests.ConnectionError:  # a replica being restarted
            time.sleep(0.01)
            continue
        samples.append(Sample(started, replica, status))


def measure(fleet: Fleet, what: str, revoke: Callable[[], None],
            changed_at: Callable[[], float] | None = None) -> float:
    """Seconds from `revoke()` returning (or `changed_at()`, when the change happened inside
    a longer call) until no request on any worker got 200 any more."""
    assert fleet.everywhere(200), f"{what}: not allowed everywhere before the revocation"
    samples: list[Sample] = []
    stop = threading.Event()
    pollers = [threading.Thread(target=_poll, args=(fleet, stop, samples, i)) for i in range(POLL_THREADS)]
    for poller in pollers:
        poller.start()
    try:
        time.sleep(0.3)
        revoke()
        revoked = time.monotonic() if changed_at is None else changed_at()
        time.sleep(WINDOW_SECONDS)
    finally:
        stop.set()
        for poller in pollers:
            poller.join()
    assert {s.status for s in samples} <= {200, 403}, sorted({s.status for s in samples})
    last_allowed = max((s.started for s in samples if s.status == 200), default=revoked)
    latency = max(0.0, last_allowed - revoked)
    after = [s for s in samples if s.started > last_allowed]
    per_replica = [sum(1 for s in after if s.replica == i) for i in range(len(fleet.replicas))]
    print(f"\nrevocation by {what}: denied everywhere {latency * 1000:.0f} ms after the change "
          f"({len(samples)} requests, then {per_replica} denials per replica)")
    fleet.latencies[what] = latency
    # Enough denials on each replica that both of its workers answered after the change.
    assert min(per_replica) >= 40, per_replica
    version = fleet.version()
    for replica in fleet.replicas:
        seen = fleet.workers_seen(replica)
        assert sorted(seen.values()).count(version) >= 2, (what, replica.url, seen, version)
    assert latency <= LIMIT_SECONDS, f"{what}: {latency:.3f} s"
    return latency


@pytest.fixture(scope="module")
def fleet(cluster: PluginCluster, module_dir: Path, fresh_databases: Callable[[], Postgres]) -> Iterator[Fleet]:
    auth_db, tracking_db = fresh_databases(), fresh_databases()
    jobs = cluster.namespace("revoke")
    kubeconfig = cluster.server_kubeconfig(module_dir / "kubeconfig", cluster.namespace("revoke-server"))
    ini = render_ini(auth_db.uri, kubeconfig).replace("default_permission = READ",
                                                      "default_permission = NO_PERMISSIONS")
    replicas: list[MlflowServer] = []
    try:
        for i in range(2):  # one after the other: the first creates the schemas
            metrics_dir = module_dir / f"metrics-{i}"
            metrics_dir.mkdir()
            replicas.append(MlflowServer(module_dir / f"replica-{i}", ini, tracking_db.uri, workers=2,
                                         extra_args=["--expose-prometheus", str(metrics_dir)]).start())
        experiment_id = _as_admin(lambda: MlflowClient(replicas[0].url).create_experiment("revocation"))
        token = cluster.token(jobs, "trainer")
        fleet = Fleet(cluster, auth_db, replicas, jobs, token, f"system:serviceaccount:{jobs}:trainer",
                      experiment_id)
        assert fleet.everywhere(403, rounds=10)  # its user exists now, with no grant
        yield fleet
        print(f"\nrevocation latencies (s): { {k: round(v, 3) for k, v in fleet.latencies.items()} }")
        for replica in replicas:
            assert "Traceback" not in replica.log()
            assert token not in replica.log()
    finally:
        for replica in replicas:
            replica.stop()


def _as_admin(action: Callable[[], object]) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_AUTH", raising=False)
        patch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN_USER)
        patch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        return action()


def _admin(url: str):  # type: ignore[no-untyped-def]
    return get_app_client("k8s-auth", url)


def test_the_change_counter_exists_once(fleet: Fleet) -> None:
    assert fleet.auth_db.query("SELECT count(*) FROM k8s_auth_change_counter") == [(1,)]
    assert fleet.version() >= 2  # each replica's start recorded its config sync


def test_mlflow_permission_api_on_replica_1(fleet: Fleet) -> None:
    client = _admin(fleet.replicas[0].url)
    _as_admin(lambda: client.grant_user_permission(fleet.username, "experiment", fleet.experiment_id, "READ"))
    wait_for(lambda: fleet.everywhere(200, rounds=10), timeout=10, what="the grant everywhere")
    measure(fleet, "MLflow's permission API",
            lambda: _as_admin(lambda: client.revoke_user_permission(fleet.username, "experiment", fleet.experiment_id)))


def test_k8s_auth_client_namespace_permission_on_replica_2(fleet: Fleet) -> None:
    client = _admin(fleet.replicas[1].url)
    _as_admin(lambda: client.set_namespace_permission(fleet.namespace, "READ"))
    wait_for(lambda: fleet.everywhere(200, rounds=10), timeout=10, what="the namespace grant everywhere")
    measure(fleet, "the k8s-auth client",
            lambda: _as_admin(lambda: client.remove_namespace_permission(fleet.namespace)))
    assert fleet.auth_db.query("SELECT count(*) FROM roles WHERE name = %s", (role_name(fleet.namespace),)) == [(0,)]


def test_role_assignment_removed(fleet: Fleet) -> None:
    client = _admin(fleet.replicas[0].url)

    def grant_by_role() -> int:
        role = client.create_role("default", "revocation-readers")
        client.add_role_permission(role.id, "experiment", fleet.experiment_id, "READ")
        client.assign_role(fleet.username, role.id)
        return int(role.id)

    role_id = _as_admin(grant_by_role)
    wait_for(lambda: fleet.everywhere(200, rounds=10), timeout=10, what="the role grant everywhere")
    measure(fleet, "a role unassigned", lambda: _as_admin(lambda: client.unassign_role(fleet.username, role_id)))


def test_admin_flag_removed(fleet: Fleet) -> None:
    client = _admin(fleet.replicas[1].url)
    _as_admin(lambda: client.update_user_admin(fleet.username, True))
    wait_for(lambda: fleet.everywhere(200, rounds=10), timeout=10, what="the admin flag everywhere")
    measure(fleet, "the admin flag cleared", lambda: _as_admin(lambda: client.update_user_admin(fleet.username, False)))


def test_config_change_by_a_restart_of_the_other_replica(fleet: Fleet, module_dir: Path) -> None:
    """A restart with a new `[k8s_auth]` that drops a namespace permission: the restarting
    replica's config sync deletes the role, and the replica that keeps running (with its
    token cache warm) stops granting within the second."""
    base = fleet.replicas[1].ini
    role = role_name(fleet.namespace)

    def restart(ini: str, name: str) -> None:
        fleet.replicas[1].stop()
        assert "Traceback" not in fleet.replicas[1].log()
        metrics_dir = module_dir / f"metrics-{name}"
        metrics_dir.mkdir()
        fleet.replicas[1] = MlflowServer(module_dir / name, ini, fleet.replicas[1].backend_uri, workers=2,
                                         extra_args=["--expose-prometheus", str(metrics_dir)]).start()

    granting = base.replace("[k8s_auth]\n", f"[k8s_auth]\nnamespace_permissions = {fleet.namespace}:READ\n")
    restart(granting, "replica-granting")
    # The restarted replica reviews the token anew and assigns the config's role.
    assert fleet.status(fleet.replicas[1].url) == 200
    wait_for(lambda: fleet.everywhere(200, rounds=10), timeout=10, what="the config's grant everywhere")
    deleted: list[float] = []
    stop = threading.Event()

    def watch_role() -> None:
        while not stop.is_set() and not deleted:
            if fleet.auth_db.query("SELECT count(*) FROM roles WHERE name = %s", (role,)) == [(0,)]:
                deleted.append(time.monotonic())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_role)
    watcher.start()
    try:
        measure(fleet, "a restart with a new [k8s_auth]", lambda: restart(base, "replica-revoking"),
                changed_at=lambda: deleted[0])
    finally:
        stop.set()
        watcher.join()


# ---- a deleted ServiceAccount ----


def test_token_cache_ttl_0_loses_a_deleted_service_account_with_kube_apiserver(
    cluster: PluginCluster, module_dir: Path, fresh_databases: Callable[[], Postgres]
) -> None:
    jobs = cluster.namespace("deleted")
    kubeconfig = cluster.server_kubeconfig(module_dir / "kubeconfig-deleted", cluster.namespace("deleted-server"))
    auth_db, tracking_db = fresh_databases(), fresh_databases()
    servers = {
        ttl: MlflowServer(module_dir / f"ttl-{ttl}", render_ini(auth_db.uri, kubeconfig, token_cache_ttl_seconds=ttl),
                          tracking_db.uri)
        for ttl in (0, 120)
    }
    try:
        for server in servers.values():
            server.start()
        token = cluster.token(jobs, "leaver")
        url = "/api/2.0/mlflow/experiments/get?experiment_id=0"
        headers = {"Authorization": f"Bearer {token}"}

        def status(ttl: int) -> int:
            return requests.get(servers[ttl].url + url, headers=headers, timeout=30).status_code

        assert status(0) == 200 and status(120) == 200
        cluster.admin.delete("v1/serviceaccounts", jobs, "leaver")
        deleted = time.monotonic()
        wait_for(lambda: status(0) == 401, timeout=API_AUTH_CACHE_SECONDS * 2 + 5, interval=0.2,
                 what="the TTL-0 server to refuse the deleted ServiceAccount")
        lost = time.monotonic() - deleted
        print(f"\ntoken_cache_ttl_seconds = 0: a deleted ServiceAccount lost access after {lost:.1f} s "
              f"(kube-apiserver caches a token authentication for ~{API_AUTH_CACHE_SECONDS} s)")
        cluster.wait_refused(token)
        assert status(0) == 401
        assert status(120) == 200  # the default cache keeps the reviewed token until its TTL
        assert lost <= API_AUTH_CACHE_SECONDS + 5
    finally:
        for server in servers.values():
            server.stop()


# ---- the counter itself, on both databases (no servers) ----


def _engines(kind: str, tmp_path: Path, fresh_databases: Callable[[], Postgres]) -> tuple[sa.Engine, sa.Engine]:
    """Two engines on one database: two processes' connection pools."""
    uri = f"sqlite:///{tmp_path}/auth.db" if kind == "sqlite" else fresh_databases().uri
    return sa.create_engine(uri), sa.create_engine(uri)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_starts_make_one_table_and_one_row(
        kind: str, tmp_path: Path, fresh_databases: Callable[[], Postgres]) -> None:
    uri = str(_engines(kind, tmp_path, fresh_databases)[0].url.render_as_string(hide_password=False))
    engines = [sa.create_engine(uri) for _ in range(8)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            revocation.ensure_schema(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engines[0].connect() as conn:
        assert conn.execute(sa.text(f"SELECT id, version FROM {revocation.TABLE_NAME}")).all() == [(1, 0)]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_write_elsewhere_is_seen_at_the_next_due_check_only(
        kind: str, tmp_path: Path, fresh_databases: Callable[[], Postgres]) -> None:
    here, elsewhere = _engines(kind, tmp_path, fresh_databases)
    revocation.ensure_schema(here)
    now = [100.0]
    changes: list[str] = []
    watcher = revocation.ChangeWatcher(lambda: here, 0.3, changes.append, clock=lambda: now[0])
    watcher.check()
    assert changes == ["other_process"]  # the first read: nothing cached yet, cleared anyway
    assert revocation.bump(elsewhere)
    now[0] += 0.29
    watcher.check()
    assert changes == ["other_process"]  # not due: no query, no clear
    now[0] += 0.02
    watcher.check()
    assert changes == ["other_process"] * 2
    now[0] += 0.31
    watcher.check()
    assert changes == ["other_process"] * 2  # read, unchanged


def test_an_unreadable_counter_clears_the_caches(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/missing-dir/auth.db")
    changes: list[str] = []
    revocation.ChangeWatcher(lambda: engine, 0.3, changes.append).check()
    assert changes == ["check_failed"]


def test_the_permission_cache_asks_the_watcher_before_a_read_and_bumps_after_a_write(tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{tmp_path}/auth.db")
    calls: list[str] = []
    cache = permission_cache.install(store, 30, 100, check=lambda: calls.append("check"),
                                     bump=lambda: calls.append("bump") is None)
    store.create_user("someone", "a-password-1234")
    assert calls == ["bump"]
    assert store.get_user("someone").username == "someone"
    assert calls == ["bump", "check"]
    with store.engine.begin() as conn:  # behind the store's back: only the TTL or a change clears
        conn.execute(sa.text("DELETE FROM users WHERE username = 'someone'"))
    assert store.get_user("someone").username == "someone"  # cached
    cache.clear("other_process")  # what the watcher does when the counter moved
    with pytest.raises(MlflowException):
        store.get_user("someone")


def test_token_cache_ttl_0_keeps_no_positive_entry() -> None:
    cache = ReviewCache(("aud",), 0, 5, 100)
    key = cache.key("token")
    cache.store(key, Reviewed("system:serviceaccount:ns:sa", "ns", "sa", time.time() + 3600))
    assert cache.lookup(key) is None
