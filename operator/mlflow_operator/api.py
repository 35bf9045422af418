"""A small generic Kubernetes REST layer over the official client's ApiClient.

The typed per-kind APIs of the `kubernetes` package would need one code path per kind;
the operator only ever creates, reads, applies (server-side), patches and deletes whole
manifests, so one path-building helper plus a few verbs is all it needs. The official client still does the
hard parts: kubeconfig/in-cluster config, TLS and token refresh.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import threading
from collections.abc import Mapping
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "mlflow-operator"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # server-side apply (JSON is valid YAML)
GROUP = "mlflow-operator.dev"
VERSION = "v1alpha1"
CR_API_VERSION = f"{GROUP}/{VERSION}"


@dataclasses.dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


# Every kind the operator reads or writes; the RBAC rules of the chart follow this table.
_RESOURCES = [
    Resource("v1", "Secret", "secrets"),
    Resource("v1", "ConfigMap", "configmaps"),
    Resource("v1", "ServiceAccount", "serviceaccounts"),
    Resource("v1", "Service", "services"),
    Resource("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Resource("v1", "Event", "events"),
    Resource("apps/v1", "Deployment", "deployments"),
    Resource("batch/v1", "Job", "jobs"),
    Resource("networking.k8s.io/v1", "Ingress", "ingresses"),
    Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets"),
    Resource("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
    # Only with spec.monitoring.serviceMonitor (the Prometheus Operator's CRD).
    Resource("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
    Resource(CR_API_VERSION, "MLflowServer", "mlflowservers"),
]
RESOURCES: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in _RESOURCES}


def resource_of(manifest: Mapping[str, Any]) -> Resource:
    key = (manifest["apiVersion"], manifest["kind"])
    try:
        return RESOURCES[key]
    except KeyError:
        raise ValueError(f"the operator does not manage {key[1]} ({key[0]})") from None


def describe(manifest: Mapping[str, Any]) -> str:
    """`Kind/name` for messages and Events: never any content of the object."""
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


class ApiError(Exception):
    """An API call failed. The text names the call and the server's reason, never a body
    we sent (it may hold a secret) and never the server's echo of a Secret."""

    def __init__(self, verb: str, kind: str, name: str, status: int, reason: str, message: str = ""):
        self.verb, self.kind, self.name = verb, kind, name
        self.status, self.reason = status, reason
        detail = f": {message}" if message and kind != "Secret" else ""
        super().__init__(f"{verb} {kind}/{name} failed with HTTP {status} {reason}{detail}")


class ApiUnreachable(ApiError):
    """No answer from the API server at all (refused, reset, timed out, TLS failure).
    Always transient: `status` 0, so callers that branch on a status retry it."""

    def __init__(self, verb: str, kind: str, name: str, cause: str):
        Exception.__init__(self, f"{verb} {kind}/{name} failed: the Kubernetes API server is"
                                 f" unreachable ({cause})")
        self.verb, self.kind, self.name = verb, kind, name
        self.status, self.reason = 0, "Unreachable"


# What the connection layer raises when no HTTP answer arrives: urllib3's errors
# (MaxRetryError, ProtocolError, timeouts, its SSLError), http.client's, and OSError
# (ssl.SSLError and ConnectionError are OSErrors).
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def _cause(exc: BaseException) -> str:
    """The innermost cause as `Type: reason`, e.g. `ConnectionRefusedError: Connection
    refused`. urllib3's own texts hold object reprs and URLs; an error's class and errno
    text are what an operator needs, and they can never carry a request body."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        # urllib3 keeps the cause in `.reason` (MaxRetryError) or in its args (ProtocolError).
        candidates = [getattr(exc, "reason", None), *exc.args, exc.__cause__, exc.__context__]
        inner = next((c for c in candidates if isinstance(c, BaseException)), None)
        if inner is None:
            break
        exc = inner
    text = getattr(exc, "strerror", None) or next((a for a in reversed(exc.args) if isinstance(a, str)), None)
    return f"{type(exc).__name__}: {str(text)[:120]}" if text else type(exc).__name__


def _error(verb: str, kind: str, name: str, exc: ApiException) -> ApiError:
    reason, message = exc.reason or "", ""
    try:
        payload = json.loads(exc.body or "{}")
        reason = payload.get("reason") or reason
        message = str(payload.get("message") or "")[:300]
    except (ValueError, AttributeError):
        pass
    return ApiError(verb, kind, name, int(exc.status or 0), str(reason), message)


class KubeApi:
    """Thread-safe: handlers run in Kopf's thread pool and share one connection pool."""

    def __init__(self, client: kubernetes.client.ApiClient, timeout: float = 30.0):
        self._client = client
        self._timeout = timeout
        self._auth = ["BearerToken"]
        self.calls = 0
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, pool_size: int = 16) -> KubeApi:
        """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG)."""
        config = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
        except kubernetes.config.ConfigException:
            # Read KUBECONFIG now: the client library reads it once, at import time.
            kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                               client_configuration=config)
        config.connection_pool_maxsize = pool_size
        return cls(kubernetes.client.ApiClient(configuration=config))

    def _call(self, verb: str, method: str, path: str, what: tuple[str, str], *,
              body: Any = None, query: dict[str, str] | None = None,
              content_type: str | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        params = self._client.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers,
            body=body, auth_settings=self._auth)
        with self._lock:
            self.calls += 1
        try:
            response = self._client.call_api(*params, _request_timeout=self._timeout)
            data = response.read()
            if not 200 <= response.status <= 299:
                raise ApiException(http_resp=response, body=data.decode("utf-8", "replace"))
        except ApiException as exc:
            raise _error(verb, what[0], what[1], exc) from None
        except CONNECTION_ERRORS as exc:
            raise ApiUnreachable(verb, what[0], what[1], _cause(exc)) from None
        return json.loads(data) if data else {}

    def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self._call("get", "GET", res.path(namespace, name), (res.kind, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, res: Resource, namespace: str | None, label_selector: str) -> list[dict[str, Any]]:
        data = self._call("list", "GET", res.path(namespace), (res.kind, label_selector),
                          query={"labelSelector": label_selector})
        return list(data.get("items") or [])

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        res, meta = resource_of(manifest), manifest["metadata"]
        return self._call("create", "POST", res.path(meta.get("namespace")), (res.kind, meta["name"]),
                          body=dict(manifest), query={"fieldManager": FIELD_MANAGER})

    def patch(self, res: Resource, namespace: str | None, name: str, patch: Mapping[str, Any],
              *, subresource: str = "") -> dict[str, Any]:
        path = res.path(namespace, name) + (f"/{subresource}" if subresource else "")
        return self._call("patch", "PATCH", path, (res.kind, name), body=dict(patch),
                          query={"fieldManager": FIELD_MANAGER}, content_type=MERGE_PATCH)

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as the operator's field manager, forcing ownership: the
        operator's fields win over other managers' conflicting values (drift repair)."""
        res, meta = resource_of(manifest), manifest["metadata"]
        return self._call("apply", "PATCH", res.path(meta.get("namespace"), meta["name"]),
                          (res.kind, meta["name"]), body=json.dumps(manifest),
                          query={"fieldManager": FIELD_MANAGER, "force": "true"}, content_type=APPLY_PATCH)

    def delete(self, res: Resource, namespace: str | None, name: str) -> bool:
        """True if deleted, False if it was already gone."""
        try:
            self._call("delete", "DELETE", res.path(namespace, name), (res.kind, name),
                       body={"propagationPolicy": "Background"})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
