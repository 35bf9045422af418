"""Typed model of the MLflowServer spec.

It mirrors `crds/mlflowservers.yaml` field for field and applies the SAME defaults
(tests/operator/test_crd.py checks they agree), because the operator must behave the
same whether or not the API server defaulted the object (e.g. `mlflow-operator render`
on a local file). On top of the schema it checks what the API server cannot: permission
names, `namespace:name` forms, flags the operator manages itself.

Values that depend on the object's name or namespace (audience, allowed namespaces)
stay None here; `names.py` computes them, so the model never needs the object's identity.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

# Re-exported: handlers and renderers import these from here.
from mlflow_operator.inputs import GeneratedSecrets, ServerRef, SpecError, StoreUris
from mlflow_operator.model_auth import Auth
from mlflow_operator.model_base import DNS_SUBDOMAIN, PERMISSIONS, SecretKeyRef
from mlflow_operator.model_base import SpecModel as _Model
from mlflow_operator.model_workspaces import Workspaces

__all__ = [
    "DEFAULT_IMAGE", "PERMISSIONS", "GeneratedSecrets", "MLflowServerSpec", "ServerRef",
    "SpecError", "StoreUris", "parse_spec",
]

try:
    _VERSION = version("mlflow-operator")
except PackageNotFoundError:  # running from a source tree without installing
    _VERSION = "0.0.0"

# The one place the default server image is named; plugin/Dockerfile builds it.
DEFAULT_IMAGE = f"ghcr.io/mlflow-operator/mlflow-server:{_VERSION}"

# Flags and variables the operator sets itself: letting extraArgs/extraEnv override
# them would silently break authentication or storage, so they are rejected instead.
MANAGED_FLAGS: frozenset[str] = frozenset({
    "--app-name", "--host", "-h", "--port", "-p", "--workers", "-w",
    "--backend-store-uri", "--registry-store-uri", "--default-artifact-root",
    "--artifacts-destination", "--serve-artifacts", "--no-serve-artifacts",
    "--allowed-hosts", "--expose-prometheus", "--dev", "--gunicorn-opts",
    "--waitress-opts", "--artifacts-only", "--disable-security-middleware", "--static-prefix",
    # spec.workspaces.mode decides these.
    "--enable-workspaces", "--disable-workspaces", "--workspace-store-uri",
})
MANAGED_ENV: frozenset[str] = frozenset({
    "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_DEFAULT_ARTIFACT_ROOT",
    "MLFLOW_SERVE_ARTIFACTS", "MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_HOST",
    "MLFLOW_PORT", "MLFLOW_WORKERS", "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE", "MLFLOW_STATIC_PREFIX",
    "MLFLOW_AUTH_DATABASE_URI",  # the migration Job's variable
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS",
    "MLFLOW_ENABLE_WORKSPACES", "MLFLOW_WORKSPACE_STORE_URI",  # spec.workspaces.mode
})



class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


# Kubernetes resource.Quantity, as the CRD's pattern states it.
_QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
_QUANTITY_RE = re.compile(_QUANTITY)


def _check_quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not _QUANTITY_RE.match(value):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2 or 4Gi")
    return value


Quantity = Annotated[str | int, AfterValidator(_check_quantity)]


class Resources(_Model):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


def _default_resources() -> Resources:
    return Resources(requests={"cpu": "250m", "memory": "512Mi"}, limits={"memory": "2Gi"})


class BackendStore(_Model):
    uri_secret_ref: SecretKeyRef | None = None


class Artifacts(_Model):
    destination: str | None = Field(default=None, pattern=r"^(s3|gs|wasbs)://.+", max_length=1024)
    proxied: bool = True
    credentials_secret: str | None = Field(default=None, max_length=253)
    s3_endpoint_url: str | None = Field(default=None, pattern=r"^https?://.+", max_length=1024)




class EnvVar(_Model):
    # Kubernetes EnvVar, kept open (valueFrom has many shapes) but name is required.
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1)


class Volume(_Model):
    # Kubernetes Volume, passed through (many source types); only the name is ours to check.
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1, max_length=63)


class VolumeMount(_Model):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True
    )
    name: str = Field(min_length=1, max_length=63)
    mount_path: str = Field(min_length=2, pattern=r"^/")


# Volumes and paths of the server pod the operator manages itself.
RESERVED_VOLUMES = frozenset({"tmp", "config", "data"})
RESERVED_PATHS = ("/tmp", "/etc/mlflow", "/data")


class JobExecution(_Model):
    # Off by default, unlike MLflow: the huey worker processes slow every pod's start
    # and cost memory, and most tracking servers never run server-side jobs.
    enabled: bool = False


class Server(_Model):
    workers: int = Field(default=2, ge=1, le=64)
    allowed_hosts: list[str] = Field(default_factory=list, max_length=64)
    extra_args: list[str] = Field(default_factory=list, max_length=64)
    extra_env: list[EnvVar] = Field(default_factory=list, max_length=128)
    expose_metrics: bool = False
    static_prefix: str | None = Field(default=None, pattern=r"^/[^{}]*[^/{}]$", max_length=256)
    cluster_domain: str = Field(default="cluster.local", pattern=rf"^{DNS_SUBDOMAIN}$")
    extra_volumes: list[Volume] = Field(default_factory=list, max_length=32)
    extra_volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=32)
    job_execution: JobExecution = Field(default_factory=JobExecution)

    @model_validator(mode="after")
    def _check_volumes(self) -> Server:
        declared = {v.name for v in self.extra_volumes}
        for volume in self.extra_volumes:
            if volume.name in RESERVED_VOLUMES:
                raise SpecError(
                    "ConflictingVolume",
                    f"server.extraVolumes: the name {volume.name!r} is used by the operator",
                )
        for mount in self.extra_volume_mounts:
            if mount.name not in declared:
                raise SpecError(
                    "InvalidVolumeMount",
                    f"server.extraVolumeMounts: {mount.name!r} is not in server.extraVolumes",
                )
            path = mount.mount_path.rstrip("/")
            if any(path == p or path.startswith(p + "/") for p in RESERVED_PATHS):
                raise SpecError(
                    "ConflictingVolume",
                    f"server.extraVolumeMounts: {mount.mount_path} is managed by the operator",
                )
        return self

    # Field validators, not a model one: they run even when another field of `server` is
    # invalid, so `render` reports both problems at once.
    @field_validator("extra_args")
    @classmethod
    def _check_managed_args(cls, extra_args: list[str]) -> list[str]:
        for arg in extra_args:
            flag = arg.split("=", 1)[0]
            if flag in MANAGED_FLAGS:
                raise SpecError(
                    "ConflictingServerArgs",
                    f"server.extraArgs: {flag} is set by the operator; use the matching spec field",
                )
        return extra_args

    @field_validator("extra_env")
    @classmethod
    def _check_managed_env(cls, extra_env: list[EnvVar]) -> list[EnvVar]:
        for env in extra_env:
            if env.name in MANAGED_ENV:
                raise SpecError(
                    "ConflictingServerEnv",
                    f"server.extraEnv: {env.name} is set by the operator; use the matching spec field",
                )
        return extra_env


class Service(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=5000, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)


class IngressTLS(_Model):
    secret_name: str = Field(min_length=1, max_length=253)


class Ingress(_Model):
    enabled: bool = False
    class_name: str | None = None
    host: str | None = Field(default=None, pattern=rf"^{DNS_SUBDOMAIN}$", max_length=253)
    path: str = Field(default="/", pattern=r"^/")
    annotations: dict[str, str] = Field(default_factory=dict)
    tls: IngressTLS | None = None


class Storage(_Model):
    size: str = Field(default="10Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
    storage_class_name: str | None = None
    # No ReadWriteOncePod: the migration Job must mount the volume while a server pod runs.
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = "ReadWriteOnce"


class NetworkPolicy(_Model):
    enabled: bool = False
    # NetworkPolicyPeer objects, passed through; empty = the auth.allowedNamespaces.
    from_: list[dict[str, Any]] = Field(default_factory=list, alias="from", max_length=64)


# Prometheus's duration syntax, as the ServiceMonitor CRD states it.
_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"


class ServiceMonitorSpec(_Model):
    enabled: bool = False
    interval: str | None = Field(default=None, max_length=32, pattern=_DURATION)
    scrape_timeout: str | None = Field(default=None, max_length=32, pattern=_DURATION)
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)


class Monitoring(_Model):
    service_monitor: ServiceMonitorSpec = Field(default_factory=ServiceMonitorSpec)


class MLflowServerSpec(_Model):
    image: str | None = Field(default=None, min_length=1, max_length=512)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list, max_length=16)
    replicas: int = Field(default=1, ge=0, le=100)
    resources: Resources = Field(default_factory=_default_resources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    affinity: dict[str, Any] = Field(default_factory=dict)
    topology_spread_constraints: list[dict[str, Any]] = Field(default_factory=list, max_length=16)
    priority_class_name: str | None = None
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    pod_labels: dict[str, str] = Field(default_factory=dict)
    service_account_annotations: dict[str, str] = Field(default_factory=dict)
    backend_store: BackendStore = Field(default_factory=BackendStore)
    artifacts: Artifacts = Field(default_factory=Artifacts)
    auth: Auth = Field(default_factory=Auth)
    server: Server = Field(default_factory=Server)
    service: Service = Field(default_factory=Service)
    ingress: Ingress = Field(default_factory=Ingress)
    storage: Storage = Field(default_factory=Storage)
    network_policy: NetworkPolicy = Field(default_factory=NetworkPolicy)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    workspaces: Workspaces = Field(default_factory=Workspaces)
    # The operator's default for an unset `image` (not a spec field: see parse_spec).
    _default_image: str = PrivateAttr(default=DEFAULT_IMAGE)

    @model_validator(mode="after")
    def _take_default_image(self, info: ValidationInfo) -> MLflowServerSpec:
        if info.context and info.context.get("default_image"):
            self._default_image = info.context["default_image"]
        return self

    @property
    def server_image(self) -> str:
        return self.image or self._default_image

    @property
    def needs_pvc(self) -> bool:
        """True when anything lives on the local volume (sqlite files or artifacts)."""
        return (
            self.backend_store.uri_secret_ref is None
            or self.auth.auth_database is None
            or self.artifacts.destination is None
        )

    def secret_refs(self) -> dict[str, SecretKeyRef]:
        """User Secrets whose values the handlers must read and pass to render."""
        refs: dict[str, SecretKeyRef] = {}
        if self.backend_store.uri_secret_ref is not None:
            refs["backendStore"] = self.backend_store.uri_secret_ref
        if self.auth.auth_database is not None:
            refs["authDatabase"] = self.auth.auth_database.uri_secret_ref
        return refs

    @model_validator(mode="after")
    def _check_cross_fields(self) -> MLflowServerSpec:
        _check_replicas(self)
        if self.ingress.tls is not None and not self.ingress.host:
            raise SpecError("InvalidIngress", "ingress.tls requires ingress.host")
        if self.ingress.enabled and not self.ingress.host:
            raise SpecError("InvalidIngress", "ingress.enabled requires ingress.host")
        if not self.artifacts.proxied and self.artifacts.destination is None:
            raise SpecError(
                "InvalidArtifacts",
                "artifacts.proxied=false requires artifacts.destination (clients need a"
                " location they can reach themselves)",
            )
        return self


    @model_validator(mode="after")
    def _check_monitoring(self) -> MLflowServerSpec:
        # MLflow serves /metrics only with --expose-prometheus, and only to admins: the
        # ServiceMonitor scrapes with the admin's Basic credentials.
        if self.monitoring.service_monitor.enabled and not self.server.expose_metrics:
            raise SpecError("InvalidMonitoring", "monitoring.serviceMonitor.enabled requires"
                            " server.exposeMetrics: true (MLflow serves /metrics only then)")
        if self.monitoring.service_monitor.enabled and not self.auth.basic_auth.enabled:
            raise SpecError("InvalidMonitoring", "monitoring.serviceMonitor.enabled requires"
                            " auth.basicAuth.enabled: true (/metrics is for MLflow admins;"
                            " Prometheus scrapes it with the admin's Basic credentials)")
        return self


    @model_validator(mode="after")
    def _check_workspaces(self) -> MLflowServerSpec:
        # RBAC is asked in the namespace of the workspace: no workspaces, no namespace.
        if self.auth.authorization == "Kubernetes" and not self.workspaces.enabled:
            raise SpecError("InvalidAuthorization", "auth.authorization Kubernetes requires workspaces.mode"
                            " Namespaces (RBAC is checked in the namespace of the workspace)")
        return self


def _check_replicas(spec: MLflowServerSpec) -> None:
    if spec.replicas <= 1:
        return
    if spec.backend_store.uri_secret_ref is None:
        raise SpecError(
            "SqliteWithReplicas",
            "replicas > 1 requires backendStore.uriSecretRef (an external database);"
            " sqlite on a volume cannot be shared by several pods",
        )
    if spec.auth.auth_database is None:
        raise SpecError(
            "SqliteWithReplicas",
            "replicas > 1 requires auth.authDatabase (an external database for users and"
            " permissions); sqlite on a volume cannot be shared by several pods",
        )
    if spec.artifacts.destination is None and spec.storage.access_mode != "ReadWriteMany":
        raise SpecError(
            "ArtifactsVolumeWithReplicas",
            "replicas > 1 with artifacts on the volume requires storage.accessMode"
            " ReadWriteMany, or set artifacts.destination (s3://, gs://, wasbs://)",
        )


def _plain(value: Any) -> Any:
    """Deep-copy Kopf's read-only Mapping views into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _path(loc: tuple[int | str, ...]) -> str:
    """`spec.auth.issuers[1]` from pydantic's ('auth', 'issuers', 1)."""
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


# A rule's message that starts with the field it is about ("server.extraArgs: ...").
_NAMES_A_FIELD = re.compile(r"^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*[ :=.\[(]")


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    """(reason, line) per problem; each line starts with the path of its field.

    Built from locations and messages only: pydantic's own str() echoes input values,
    and a user may have pasted a secret into the wrong field.
    """
    found = []
    for item in error.errors(include_url=False, include_input=False):
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, SpecError):  # one of our own rules, with its reason
            text = f"spec.{cause.message}" if _NAMES_A_FIELD.match(cause.message) \
                else f"{_path(item['loc'])}: {cause.message}"
            found.append((cause.reason, text))
        else:
            found.append(("InvalidSpec", f"{_path(item['loc'])}: {item['msg']}"))
    return found


def _spec_error(error: ValidationError) -> SpecError:
    """One SpecError for all problems: `problems` has a line per problem, with its own
    reason; the condition's reason is theirs if they share one, else InvalidSpec."""
    problems = _problems(error)
    lines = tuple(f"{line} ({reason})" for reason, line in problems)
    causes = [(item.get("ctx") or {}).get("error") for item in error.errors(include_url=False)]
    if len(causes) == 1 and isinstance(causes[0], SpecError):
        return SpecError(causes[0].reason, causes[0].message, lines)
    reasons = {reason for reason, _ in problems}
    reason = reasons.pop() if len(reasons) == 1 else "InvalidSpec"
    return SpecError(reason, "; ".join(line for _, line in problems), lines)


def check_image(value: str) -> str:
    """An image reference as the CRD's `image` field accepts it; ValueError otherwise."""
    if not 1 <= len(value) <= 512 or any(ch.isspace() for ch in value):
        raise ValueError(f"{value!r} is not an image reference (1-512 characters, no spaces)")
    return value


def parse_spec(spec: Mapping[str, Any] | None, default_image: str = DEFAULT_IMAGE) -> MLflowServerSpec:
    """Validate a raw spec, apply defaults, or raise SpecError.

    `default_image`: the server image when `spec.image` is unset (the operator's
    `--default-server-image`, e.g. a mirror in an air-gapped cluster).
    """
    # SpecError is a ValueError: pydantic collects those raised by our validators with
    # its own errors, so every problem of the spec is reported at once.
    try:
        return MLflowServerSpec.model_validate(
            _plain(spec or {}), context={"default_image": check_image(default_image)})
    except ValidationError as error:
        raise _spec_error(error) from None
