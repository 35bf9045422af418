"""The server Deployment: `mlflow server --app-name k8s-auth` under uvicorn."""

from __future__ import annotations

from typing import Any

from mlflow_operator import names
from mlflow_operator.model import MLflowServerSpec, ServerRef
from mlflow_operator.render import pod
from mlflow_operator.render.common import Manifest, metadata

APP_NAME = "k8s-auth"
METRICS_DIR = "/tmp/prometheus"
# MLflow's own default allow-list for IP literals: pod IPs are private, and Prometheus
# scrapes by pod IP. A DNS-rebinding attacker's Host header is a domain, never these.
PRIVATE_IP_HOSTS = ("10.*", *(f"172.{i}.*" for i in range(16, 32)), "192.168.*")
LOCAL_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*")


def allowed_hosts(ref: ServerRef, spec: MLflowServerSpec) -> list[str]:
    """Host headers the server accepts (DNS-rebinding protection)."""
    hosts: list[str] = []
    for name in names.service_hostnames(ref, spec):
        hosts += [name, f"{name}:{spec.service.port}"]
    if spec.ingress.enabled and spec.ingress.host:
        hosts.append(spec.ingress.host)
    hosts += LOCAL_HOSTS  # kubectl port-forward
    if spec.server.expose_metrics:
        hosts += PRIVATE_IP_HOSTS
    hosts += spec.server.allowed_hosts
    return list(dict.fromkeys(hosts))


def _artifact_args(spec: MLflowServerSpec) -> list[str]:
    artifacts = spec.artifacts
    if not artifacts.proxied:
        return ["--no-serve-artifacts", "--default-artifact-root", str(artifacts.destination)]
    destination = artifacts.destination or names.PVC_ARTIFACTS
    return ["--serve-artifacts", "--artifacts-destination", destination]


# The plugin's workspace provider (entry point `mlflow.workspace_provider`, k8s-namespaces).
WORKSPACE_STORE_URI = "k8s-namespaces://"


def server_args(ref: ServerRef, spec: MLflowServerSpec) -> list[str]:
    """The store URI is not here: it comes from the config Secret as MLFLOW_BACKEND_STORE_URI."""
    args = [
        "server",
        "--app-name", APP_NAME,
        "--host", "0.0.0.0",
        "--port", str(names.SERVER_PORT),
        "--workers", str(spec.server.workers),
        "--allowed-hosts", ",".join(allowed_hosts(ref, spec)),
        *_artifact_args(spec),
    ]
    if spec.server.static_prefix:
        args += ["--static-prefix", spec.server.static_prefix]
    if spec.server.expose_metrics:
        args += ["--expose-prometheus", METRICS_DIR]
    if spec.workspaces.enabled:  # the plugin's read-only provider: workspaces are namespaces
        args += ["--enable-workspaces", "--workspace-store-uri", WORKSPACE_STORE_URI]
    return args + list(spec.server.extra_args)


def _env(ref: ServerRef, spec: MLflowServerSpec) -> list[dict[str, Any]]:
    admin_secret = names.admin_secret_name(ref, spec)
    env = [
        *pod.base_env(),
        {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": names.AUTH_INI_PATH},
        pod.secret_env(
            "MLFLOW_BACKEND_STORE_URI", names.config_secret_name(ref), names.BACKEND_URI_KEY
        ),
        pod.secret_env(
            "MLFLOW_FLASK_SERVER_SECRET_KEY", names.secret_key_secret_name(ref),
            names.SECRET_KEY_KEY,
        ),
        pod.secret_env("MLFLOW_AUTH_ADMIN_PASSWORD", admin_secret, names.ADMIN_PASSWORD_KEY),
        *_job_env(spec),
    ]
    if spec.artifacts.s3_endpoint_url:
        env.append({"name": "MLFLOW_S3_ENDPOINT_URL", "value": spec.artifacts.s3_endpoint_url})
    return env + [e.model_dump(by_alias=True, exclude_none=True) for e in spec.server.extra_env]


def _job_env(spec: MLflowServerSpec) -> list[dict[str, Any]]:
    """MLflow's job execution, explicit either way (MLflow's own default is on)."""
    enabled = spec.server.job_execution.enabled
    env = [{"name": "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "value": "true" if enabled else "false"}]
    if enabled and spec.replicas > 1:
        # Every replica would schedule the periodic tasks (their huey locks live in each
        # pod's own storage), and a Deployment cannot single one replica out.
        env.append({"name": "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS", "value": "false"})
    return env


def _probe(spec: MLflowServerSpec, period: int, failures: int) -> dict[str, Any]:
    # /health is served without authentication and exempt from host validation; with a
    # static prefix it moves under the prefix.
    return {
        "httpGet": {"path": f"{spec.server.static_prefix or ''}/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container(ref: ServerRef, spec: MLflowServerSpec) -> dict[str, Any]:
    mounts = [
        pod.tmp_mount(),
        {"name": pod.CONFIG_VOLUME, "mountPath": names.CONFIG_MOUNT, "readOnly": True},
    ]
    if spec.needs_pvc:
        mounts.append(pod.data_mount())
    mounts += [m.model_dump(by_alias=True) for m in spec.server.extra_volume_mounts]
    container: dict[str, Any] = {
        "name": "mlflow",
        "image": spec.server_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["mlflow"],
        "args": server_args(ref, spec),
        "workingDir": "/tmp",
        "env": _env(ref, spec),
        "ports": [{"name": "http", "containerPort": names.SERVER_PORT, "protocol": "TCP"}],
        # MLflow imports for several seconds per worker; the startup probe allows 5 minutes
        # so liveness never kills a slow first start.
        "startupProbe": _probe(spec, period=5, failures=60),
        "readinessProbe": _probe(spec, period=10, failures=3),
        "livenessProbe": _probe(spec, period=20, failures=6),
        "resources": pod.resources(spec),
        "securityContext": pod.container_security_context(),
        "volumeMounts": mounts,
    }
    if spec.artifacts.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.artifacts.credentials_secret}}]
    return container


def _volumes(ref: ServerRef, spec: MLflowServerSpec) -> list[dict[str, Any]]:
    volumes = [
        pod.tmp_volume(),
        {
            "name": pod.CONFIG_VOLUME,
            "secret": {
                "secretName": names.config_secret_name(ref),
                "items": [{"key": names.AUTH_INI_KEY, "path": names.AUTH_INI_KEY}],
                "defaultMode": 0o440,
            },
        },
    ]
    if spec.needs_pvc:
        volumes.append(pod.data_volume(ref))
    return volumes + [v.model_dump(by_alias=True) for v in spec.server.extra_volumes]


def _pod_annotations(spec: MLflowServerSpec, checksum: str) -> dict[str, str]:
    annotations = dict(spec.pod_annotations)
    if spec.server.expose_metrics:
        annotations.update({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(names.SERVER_PORT),
            "prometheus.io/path": "/metrics",
        })
    annotations[names.CONFIG_CHECKSUM_ANNOTATION] = checksum
    return annotations


def _topology_spread(ref: ServerRef, spec: MLflowServerSpec) -> list[dict[str, Any]]:
    """A constraint without labelSelector would match nothing: default it to our pods."""
    selector = {"matchLabels": names.selector_labels(ref)}
    return [{"labelSelector": selector, **c} for c in spec.topology_spread_constraints]


def _pod_spec(ref: ServerRef, spec: MLflowServerSpec) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.service_account_name(ref),
        # The server's own token authenticates its TokenReview calls; the Python client's
        # in-cluster config re-reads it as the kubelet rotates it.
        "automountServiceAccountToken": True,
        "securityContext": pod.pod_security_context(),
        "terminationGracePeriodSeconds": 30,
        "containers": [_container(ref, spec)],
        "volumes": _volumes(ref, spec),
    }
    optional = {
        "nodeSelector": dict(spec.node_selector),
        "tolerations": pod.tolerations(spec),
        "affinity": dict(spec.affinity),
        "topologySpreadConstraints": _topology_spread(ref, spec),
        "priorityClassName": spec.priority_class_name,
        "imagePullSecrets": pod.image_pull_secrets(spec),
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    return pod_spec


def _strategy(spec: MLflowServerSpec) -> dict[str, Any]:
    if pod.uses_sqlite(spec):
        # Two pods must never write one sqlite file, and a ReadWriteOnce volume cannot
        # follow a surge pod to another node.
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


def render_deployment(ref: ServerRef, spec: MLflowServerSpec, checksum: str) -> Manifest:
    """`checksum` covers the rendered config; a new value rolls the pods."""
    pod_labels = {**spec.pod_labels, **names.labels(ref, "server")}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(ref, names.deployment_name(ref), "server"),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": names.selector_labels(ref)},
            "strategy": _strategy(spec),
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": _pod_annotations(spec, checksum),
                },
                "spec": _pod_spec(ref, spec),
            },
        },
    }
