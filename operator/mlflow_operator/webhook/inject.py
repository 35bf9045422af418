"""What the injection webhook adds to a labelled Pod, or why it refuses it. Pure: no I/O.

A Pod labelled `mlflow-operator.dev/server: <name>` (an MLflowServer of its own namespace)
or `<namespace>.<name>` (label values cannot hold a `/`; names of namespaces and
MLflowServers cannot hold a `.`, so the first dot splits them) gets, in every container
and init container (an init container that downloads a model needs the same access):

* a projected ServiceAccount token volume with the server's audience, mounted read-only at
  `TOKEN_DIR` (the job-side provider's default path);
* `MLFLOW_TRACKING_URI` (the server's in-cluster URL), `MLFLOW_TRACKING_AUTH=k8s-token` and
  `MLFLOW_K8S_TOKEN_PATH`.

No `MLFLOW_WORKSPACE`: with `spec.workspaces.mode: Namespaces` the server already puts a
ServiceAccount caller that names no workspace into its own namespace's workspace, which is
what the variable would say; and where the namespace is not a workspace (left out by
`spec.workspaces.namespaceSelector`, or a one-character name MLflow refuses) a header
naming it would turn the server's fallback to `default` into an error. A Pod that wants
another workspace sets the variable itself, and its value wins.

What the Pod already says wins: a variable already in a container's `env` is kept, a
container that already mounts something at (or above, or below) `TOKEN_DIR` keeps its own
mount (a warning says so), and a volume name already taken by another volume is not
reused. Applying the result twice changes nothing (the API server may call the webhook
again after another webhook's change: `reinvocationPolicy: IfNeeded`).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from mlflow_operator import names
from mlflow_operator.model import ServerRef, SpecError, parse_spec

LABEL = f"{names.GROUP}/server"
TOKEN_DIR = "/var/run/secrets/mlflow/serviceaccount"
TOKEN_FILE = "token"
TOKEN_PATH = f"{TOKEN_DIR}/{TOKEN_FILE}"
VOLUME = "mlflow-operator-token"
# kubelet renews a projected token at 80% of its life; MLflow's client re-reads the file
# on every request, so an hour is plenty and keeps a leaked token short-lived.
TOKEN_SECONDS = 3600
AUTH_PROVIDER = "k8s-token"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONTAINER_KINDS = ("initContainers", "containers")


class Refused(Exception):
    """The Pod must not be created as it is; the message says why and names the server."""


@dataclasses.dataclass(frozen=True)
class Target:
    """What a Pod needs to reach one MLflowServer."""
    url: str
    audience: str


@dataclasses.dataclass(frozen=True)
class Injection:
    ops: list[dict[str, Any]]  # a JSONPatch (RFC 6902) against the Pod
    warnings: list[str]


def parse_label(value: str, pod_namespace: str) -> tuple[str, str]:
    """(namespace, name) of the MLflowServer a label value names."""
    if "/" in value:  # the API server rejects such a label later anyway: say why first
        raise Refused(f"label {LABEL}={value!r}: label values cannot hold '/', use <namespace>.<name>")
    namespace, sep, name = value.partition(".")
    if not sep:
        namespace, name = pod_namespace, value
    for part in (namespace, name):
        if not _DNS_LABEL.match(part):
            raise Refused(f"label {LABEL}={value!r} does not name an MLflowServer: use <name>"
                          f" (same namespace) or <namespace>.<name>")
    return namespace, name


def target_for(server: Mapping[str, Any], pod_namespace: str) -> tuple[Target, list[str]]:
    """The server's in-cluster URL and token audience, plus warnings; Refused when a Pod of
    `pod_namespace` cannot use it (its jobs would get 401/403 on every call)."""
    meta = server["metadata"]
    ref = ServerRef(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))
    what = f"MLflowServer {ref.namespace}/{ref.name}"
    if meta.get("deletionTimestamp"):
        raise Refused(f"{what} is being deleted")
    try:
        spec = parse_spec(server.get("spec"))
    except SpecError as exc:
        raise Refused(f"{what} has an invalid spec ({exc.reason}): {exc.message}") from None
    allowed = names.allowed_namespaces(spec, ref)
    if "*" not in allowed and pod_namespace not in allowed:
        raise Refused(f"{what} does not accept ServiceAccounts of namespace {pod_namespace}"
                      f" (its spec.auth.allowedNamespaces: {', '.join(allowed) or 'none'})")
    warnings = []
    ready = next((c for c in (server.get("status") or {}).get("conditions") or []
                  if c.get("type") == "Ready"), None)
    if not ready or ready.get("status") != "True":
        # Not a refusal: a server that is rolling out or restarting is back soon, and a
        # refused Pod of a Job only comes back after the Job controller's backoff.
        reason = (ready or {}).get("reason") or "not reconciled yet"
        warnings.append(f"{what} is not Ready ({reason}): MLflow calls fail until it is")
    return Target(url=names.server_url(ref, spec), audience=names.audience(spec, ref)), warnings


def _volume(target: Target) -> dict[str, Any]:
    return {"name": VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "path": TOKEN_FILE, "audience": target.audience, "expirationSeconds": TOKEN_SECONDS}}]}}


def _env(target: Target) -> list[dict[str, str]]:
    return [{"name": "MLFLOW_TRACKING_URI", "value": target.url},
            {"name": "MLFLOW_TRACKING_AUTH", "value": AUTH_PROVIDER},
            {"name": "MLFLOW_K8S_TOKEN_PATH", "value": TOKEN_PATH}]


def _overlaps(path: str, other: str) -> bool:
    a, b = path.rstrip("/") + "/", other.rstrip("/") + "/"
    return a.startswith(b) or b.startswith(a)


def _volume_name(volumes: list[Mapping[str, Any]], wanted: dict[str, Any]) -> tuple[str, bool]:
    """A name for our volume and whether the Pod already has it (same name and content)."""
    taken = {v.get("name"): v for v in volumes}
    for i in range(len(volumes) + 1):
        name = VOLUME if i == 0 else f"{VOLUME}-{i}"
        if name not in taken:
            return name, False
        if {**taken[name], "name": VOLUME} == wanted:
            return name, True
    raise AssertionError("unreachable: one of len+1 names is free")


def _add(ops: list[dict[str, Any]], path: str, existing: list[Any] | None, items: list[Any]) -> None:
    """Append `items` to the list at `path`, creating it when the Pod has none."""
    if not items:
        return
    if existing is None:
        ops.append({"op": "add", "path": path, "value": items})
    else:
        ops.extend({"op": "add", "path": f"{path}/-", "value": item} for item in items)


def inject(pod: Mapping[str, Any], target: Target) -> Injection:
    """The JSONPatch giving every container of `pod` access to `target`."""
    spec = pod.get("spec") or {}
    volumes = spec.get("volumes")
    wanted = _volume(target)
    volume, present = _volume_name(volumes or [], wanted)
    mount = {"name": volume, "mountPath": TOKEN_DIR, "readOnly": True}
    ops: list[dict[str, Any]] = []
    warnings: list[str] = []
    mounted = False
    for kind in _CONTAINER_KINDS:
        for i, container in enumerate(spec.get(kind) or []):
            base = f"/spec/{kind}/{i}"
            env = container.get("env")
            have = {e.get("name") for e in env or []}
            _add(ops, f"{base}/env", env, [e for e in _env(target) if e["name"] not in have])
            mounts = container.get("volumeMounts")
            clash = [m for m in mounts or [] if _overlaps(m.get("mountPath", ""), TOKEN_DIR)]
            if not clash:
                _add(ops, f"{base}/volumeMounts", mounts, [mount])
                mounted = True
            elif any(m == mount for m in clash):
                mounted = True  # injected before (a reinvocation)
            else:
                warnings.append(f"container {container.get('name')} mounts {clash[0].get('mountPath')}"
                                f" itself: its own token there is used, not the injected one")
    if mounted and not present:
        _add(ops, "/spec/volumes", volumes, [{**wanted, "name": volume}])
    return Injection(ops=ops, warnings=warnings)
