"""The plugin tests' part of the real control plane (tests/conftest.py: `control_plane`, `admin`).

    cluster = PluginCluster(admin, plane, FaultProxy(...).start())
    ns = cluster.namespace("jobs")                    # fresh namespace, deleted by close()
    token = cluster.token(ns, "trainer")              # TokenRequest, audience AUDIENCE
    kubeconfig = cluster.server_kubeconfig(path, ns)  # the MLflow server's own identity
    cluster.reviews()                                 # TokenReviews seen by the fault proxy

The MLflow server authenticates to kube-apiserver as it does in a cluster: as its own
ServiceAccount (`mlflow-server`), bound by a ClusterRoleBinding to `system:auth-delegator`
(what lets it create TokenReviews), with a token from the TokenRequest API in its
kubeconfig. That kubeconfig points at the fault proxy, so tests count the server's
TokenReviews and inject API errors, slowness, dropped connections and outages there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from tests.conftest import unique_namespace
from tests.support.controlplane import API_AUDIENCE, ControlPlane
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import ApiError, Kube
from tests.support.waiting import wait_for  # noqa: F401  (re-exported to the tests)

AUDIENCE = "mlflow-test"
SERVER_SA = "mlflow-server"
TOKENREVIEWS = r"/apis/authentication.k8s.io/v1/tokenreviews$"
CLUSTER_ROLE_BINDINGS = "rbac.authorization.k8s.io/v1/clusterrolebindings"
# kube-apiserver keeps a successful token authentication for 10 s: waits allow for it.
API_AUTH_CACHE_SECONDS = 10


@dataclass
class PluginCluster:
    admin: Kube
    plane: ControlPlane
    proxy: FaultProxy
    namespaces: list[str] = field(default_factory=list)
    bindings: list[str] = field(default_factory=list)

    # ---- namespaces and job tokens ----

    def namespace(self, hint: str) -> str:
        name = unique_namespace(f"plugin-{hint}")
        self.admin.create_namespace(name)
        self.namespaces.append(name)
        return name

    def token(self, namespace: str, name: str, audiences: tuple[str, ...] = (AUDIENCE,),
              expiration_seconds: int = 3600) -> str:
        """A token as the kubelet projects it for a job (the ServiceAccount is made if absent)."""
        if self.admin.get("v1/serviceaccounts", namespace, name) is None:
            self.admin.create_service_account(namespace, name)
        return self.admin.token_for(namespace, name, list(audiences), expiration_seconds)

    def wait_refused(self, token: str, audiences: tuple[str, ...] = (AUDIENCE,)) -> None:
        """Until kube-apiserver itself refuses `token` (its own auth cache included)."""
        wait_for(lambda: not self.admin.token_review(token, audiences).get("authenticated"),
                 timeout=API_AUTH_CACHE_SECONDS * 2 + 5, what="kube-apiserver to refuse the token")

    def public_key_pem(self) -> bytes:
        """The ServiceAccount signing key's public half (what /openid/v1/jwks publishes)."""
        private = serialization.load_pem_private_key(Path(self.plane.pki.path("sa.key")).read_bytes(), None)
        return private.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)

    # ---- the MLflow server's identity ----

    def binding_name(self, namespace: str) -> str:
        return f"{namespace}-{SERVER_SA}-auth-delegator"

    def bind(self, namespace: str) -> None:
        """ClusterRoleBinding of the server's ServiceAccount to system:auth-delegator."""
        name = self.binding_name(namespace)
        self.admin.create(CLUSTER_ROLE_BINDINGS, {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": SERVER_SA, "namespace": namespace}]})
        if name not in self.bindings:
            self.bindings.append(name)

    def unbind(self, namespace: str) -> None:
        self.admin.delete(CLUSTER_ROLE_BINDINGS, None, self.binding_name(namespace))

    def server_token(self, namespace: str, *, bind: bool = True) -> str:
        if self.admin.get("v1/serviceaccounts", namespace, SERVER_SA) is None:
            self.admin.create_service_account(namespace, SERVER_SA)
            if bind:
                self.bind(namespace)
        return self.admin.token_for(namespace, SERVER_SA, [API_AUDIENCE], 3 * 3600)

    def server_kubeconfig(self, path: Path, namespace: str, *, bind: bool = True, via_proxy: bool = True) -> Path:
        """The kubeconfig the server would get in-cluster: its ServiceAccount's token."""
        return self.admin.write_kubeconfig(path, token=self.server_token(namespace, bind=bind),
                                           server=self.proxy.url if via_proxy else self.plane.url,
                                           namespace=namespace)

    def may_review(self, namespace: str) -> bool:
        """Whether RBAC lets the server's ServiceAccount create TokenReviews right now."""
        server = self.admin.with_token(self.server_token(namespace, bind=False))
        try:
            server.token_review("not-a-token", [AUDIENCE])
        except ApiError as exc:
            if exc.code == 403:
                return False
            raise
        return True

    # ---- what the server asked ----

    def reviews(self) -> int:
        """TokenReviews that went through the proxy (the servers' ones, not the admin's)."""
        return self.proxy.count("POST", TOKENREVIEWS)

    def close(self) -> None:
        for name in self.bindings:  # cluster-scoped: the namespaces' deletion would not take them
            self.admin.delete(CLUSTER_ROLE_BINDINGS, None, name)
        for namespace in self.namespaces:
            self.admin.delete("v1/namespaces", None, namespace)
        self.proxy.stop()
