"""A small synchronous client for the real API server, for test code and fixtures.

The same verbs the tests used against the retired emulator, now plain HTTPS calls to
kube-apiserver (tests.support.controlplane), so every answer is the real one:

    kube = Kube.from_kubeconfig(path)                 # admin, or any identity's kubeconfig
    kube.create('v1/configmaps', {'metadata': {'name': 'c'}}, namespace='jobs')
    kube.get('v1/configmaps', 'jobs', 'c')             # dict, or None when absent (404)
    kube.list('apps/v1/deployments', 'jobs', labels='app=x')
    kube.patch('v1/configmaps', 'jobs', 'c', {...})    # merge patch; subresource='status'
    kube.apply(manifest, manager='tests')              # server-side apply
    kube.delete('v1/configmaps', 'jobs', 'c')          # True if it existed
    kube.create_namespace('jobs'); kube.create_service_account('jobs', 'trainer')
    kube.token_for('jobs', 'trainer', ['mlflow'])     # TokenRequest: a real signed token
    kube.token_review(token, ['mlflow'])              # the TokenReview status
    kube.delete_service_account('jobs', 'trainer')     # its tokens now fail TokenReview

Resources are written `'v1/pods'`, `'apps/v1/deployments'`,
`'mlflow-operator.dev/v1alpha1/mlflowservers'`; cluster-scoped ones take namespace=None.
Errors raise ApiError with the API server's status code, reason and message.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

CLUSTER_SCOPED = {"namespaces", "nodes", "clusterroles", "clusterrolebindings", "customresourcedefinitions",
                  "mutatingwebhookconfigurations", "validatingwebhookconfigurations", "tokenreviews",
                  "subjectaccessreviews", "selfsubjectaccessreviews", "persistentvolumes", "storageclasses",
                  "priorityclasses", "ingressclasses", "certificatesigningrequests", "apiservices"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message


def resource_path(resource: str, namespace: str | None, name: str | None = None,
                  subresource: str | None = None) -> str:
    parts = resource.split("/")
    *group_version, plural = parts
    prefix = "/api/" + "/".join(group_version) if len(group_version) == 1 else "/apis/" + "/".join(group_version)
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def resource_of(manifest: dict[str, Any]) -> str:
    """'apps/v1/deployments' for a Deployment manifest (plural by the usual English rule)."""
    kind = manifest["kind"].lower()
    if kind == "endpoints":
        plural = kind
    elif kind.endswith("y"):
        plural = kind[:-1] + "ies"
    elif kind.endswith(("s", "x", "ch")):
        plural = kind + "es"
    else:
        plural = kind + "s"
    return f"{manifest['apiVersion']}/{plural}"


def _session() -> requests.Session:
    session = requests.Session()
    # Not the environment's CA bundle or proxies: requests lets REQUESTS_CA_BUNDLE override
    # a session's own `verify`, and the cluster has its own CA on loopback.
    session.trust_env = False
    return session


@dataclass
class Kube:
    server: str
    session: requests.Session
    namespace: str = "default"

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> Kube:
        config = yaml.safe_load(Path(path).read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        session = _session()
        session.verify = cluster.get("certificate-authority") or True
        if "token" in user:
            session.headers["Authorization"] = f"Bearer {user['token']}"
        elif "client-certificate" in user:
            session.cert = (user["client-certificate"], user["client-key"])
        return cls(cluster["server"], session, context.get("namespace", "default"))

    def with_token(self, token: str) -> Kube:
        """The same server, acting as the identity of `token`."""
        session = _session()
        session.verify = self.session.verify
        session.headers["Authorization"] = f"Bearer {token}"
        return Kube(self.server, session, self.namespace)

    def write_kubeconfig(self, path: str | Path, *, token: str | None = None, namespace: str | None = None,
                         server: str | None = None) -> Path:
        """A kubeconfig for Kopf, kubectl or the plugin: this identity, or a bearer `token`."""
        user: dict[str, str] = {"token": token} if token else (
            {"token": self.session.headers["Authorization"].split(" ", 1)[1]}
            if "Authorization" in self.session.headers else
            {"client-certificate": self.session.cert[0], "client-key": self.session.cert[1]})  # type: ignore[index]
        cluster: dict[str, Any] = {"server": server or self.server}
        if isinstance(self.session.verify, str):
            cluster["certificate-authority"] = self.session.verify
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "test",
                  "clusters": [{"name": "test", "cluster": cluster}],
                  "users": [{"name": "test", "user": user}],
                  "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                            "namespace": namespace or self.namespace}}]}
        target = Path(path)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        target.chmod(0o600)
        return target

    # ---- HTTP ----

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = 30) -> Any:
        data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        response = self.session.request(method, self.server + path, data=data, params=params, timeout=timeout,
                                        headers={"Content-Type": content_type} if data is not None else None)
        if response.status_code >= 400:
            try:
                status = response.json()
            except ValueError:
                status = {"reason": response.reason, "message": response.text[:500]}
            raise ApiError(response.status_code, status.get("reason", ""), status.get("message", ""))
        return response.json() if response.content else None

    # ---- verbs ----

    def create(self, resource: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or (body.get("metadata") or {}).get("namespace")
        if resource.split("/")[-1] in CLUSTER_SCOPED:
            ns = None
        return self.request("POST", resource_path(resource, ns), body=body)

    def get(self, resource: str, namespace: str | None, name: str, subresource: str | None = None) -> dict[str, Any] | None:
        try:
            return self.request("GET", resource_path(resource, namespace, name, subresource))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(self, resource: str, namespace: str | None = None, labels: str | None = None,
             fields: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        return self.request("GET", resource_path(resource, namespace), params=params)["items"]

    def patch(self, resource: str, namespace: str | None, name: str, patch: dict[str, Any],
              subresource: str | None = None) -> dict[str, Any]:
        return self.request("PATCH", resource_path(resource, namespace, name, subresource), body=patch,
                            content_type="application/merge-patch+json")

    def apply(self, manifest: dict[str, Any], manager: str = "tests", subresource: str | None = None) -> dict[str, Any]:
        meta = manifest["metadata"]
        resource = resource_of(manifest)
        namespace = None if resource.split("/")[-1] in CLUSTER_SCOPED else meta.get("namespace", self.namespace)
        return self.request("PATCH", resource_path(resource, namespace, meta["name"], subresource),
                            body=manifest, params={"fieldManager": manager, "force": "true"},
                            content_type="application/apply-patch+yaml")

    def delete(self, resource: str, namespace: str | None, name: str, *, propagation: str = "Background") -> bool:
        try:
            self.request("DELETE", resource_path(resource, namespace, name),
                         body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation})
            return True
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise

    # ---- conveniences ----

    def create_namespace(self, namespace: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Create a Namespace (idempotent: returns the existing one)."""
        existing = self.get("v1/namespaces", None, namespace)
        if existing is not None:
            return existing
        return self.create("v1/namespaces", {"metadata": {"name": namespace, "labels": labels or {}}})

    def create_service_account(self, namespace: str, name: str) -> str:
        """Create a ServiceAccount; returns its uid."""
        return self.create("v1/serviceaccounts", {"metadata": {"name": name}}, namespace)["metadata"]["uid"]

    def delete_service_account(self, namespace: str, name: str) -> None:
        self.delete("v1/serviceaccounts", namespace, name)

    def token_for(self, namespace: str, name: str, audiences: Sequence[str], expiration_seconds: int = 3600) -> str:
        """A ServiceAccount token from the TokenRequest API, as the kubelet projects them."""
        review = self.request("POST", resource_path("v1/serviceaccounts", namespace, name, "token"), body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": list(audiences), "expirationSeconds": expiration_seconds}})
        return review["status"]["token"]

    def token_review(self, token: str, audiences: Sequence[str]) -> dict[str, Any]:
        """The API server's verdict on `token` for `audiences` (the TokenReview status)."""
        return self.create("authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)}})["status"]

