"""The Job that migrates both databases before a rollout.

Two steps, no shell: an init container upgrades MLflow's tracking schema, then the main
container upgrades the auth schema. Database URIs reach them as environment variables from
the config Secret and are expanded by the kubelet (`$(VAR)`), so they never appear in the
Job's spec. The name carries a keyed hash of image and database URIs: a new image, database or
password gets a new Job; the same ones re-use the finished Job.
"""

from __future__ import annotations

from typing import Any

from mlflow_operator import names
from mlflow_operator.model import GeneratedSecrets, MLflowServerSpec, ServerRef, StoreUris
from mlflow_operator.render import pod
from mlflow_operator.render.common import Manifest, metadata

MIGRATION_HASH_LABEL = f"{names.GROUP}/migration-hash"
BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"
AUTH_DB_ENV = "MLFLOW_AUTH_DATABASE_URI"


def _container(name: str, spec: MLflowServerSpec, command: list[str], env: dict) -> dict:
    mounts = [pod.tmp_mount()]
    if pod.uses_sqlite(spec):
        mounts.append(pod.data_mount())
    # The server's extra env and volumes may be what reaching the database takes (a CA
    # bundle, PGSSLMODE, a proxy): the migration gets them too.
    mounts += [m.model_dump(by_alias=True) for m in spec.server.extra_volume_mounts]
    extra_env = [e.model_dump(by_alias=True, exclude_none=True) for e in spec.server.extra_env]
    return {
        "name": name,
        "image": spec.server_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": command,
        "env": [*pod.base_env(), env, *extra_env],
        "resources": pod.resources(spec),
        "securityContext": pod.container_security_context(),
        "volumeMounts": mounts,
    }


def _affinity(ref: ServerRef, spec: MLflowServerSpec) -> dict[str, Any] | None:
    affinity: dict[str, Any] = {}
    if "nodeAffinity" in spec.affinity:
        affinity["nodeAffinity"] = spec.affinity["nodeAffinity"]
    if pod.uses_sqlite(spec) and spec.storage.access_mode == "ReadWriteOnce":
        # A ReadWriteOnce volume is shared only by pods on one node: prefer the node of the
        # running server pod, which holds the volume during an upgrade.
        affinity["podAffinity"] = {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": names.selector_labels(ref)},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    return affinity or None


def render_migration_job(
    ref: ServerRef, spec: MLflowServerSpec, uris: StoreUris, generated: GeneratedSecrets
) -> Manifest:
    config = names.config_secret_name(ref)
    migration_hash = names.migration_hash(spec, uris, generated)
    tracking = _container(
        "migrate-tracking", spec, ["mlflow", "db", "upgrade", f"$({BACKEND_ENV})"],
        pod.secret_env(BACKEND_ENV, config, names.BACKEND_URI_KEY),
    )
    auth = _container(
        "migrate-auth", spec,
        ["python", "-m", "mlflow.server.auth", "db", "upgrade", "--url", f"$({AUTH_DB_ENV})"],
        pod.secret_env(AUTH_DB_ENV, config, names.AUTH_DB_URI_KEY),
    )
    volumes = [pod.tmp_volume()]
    if pod.uses_sqlite(spec):
        volumes.append(pod.data_volume(ref))
    volumes += [v.model_dump(by_alias=True) for v in spec.server.extra_volumes]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": names.service_account_name(ref),
        "automountServiceAccountToken": False,
        "securityContext": pod.pod_security_context(),
        "initContainers": [tracking],
        "containers": [auth],
        "volumes": volumes,
    }
    _scheduling(pod_spec, ref, spec)
    pod_labels = {**names.labels(ref, "migration"), MIGRATION_HASH_LABEL: migration_hash}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(
            ref, names.migration_job_name(ref, spec, uris, generated), "migration",
            labels={MIGRATION_HASH_LABEL: migration_hash},
        ),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 3600,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def _scheduling(pod_spec: dict[str, Any], ref: ServerRef, spec: MLflowServerSpec) -> None:
    """Same node constraints as the server: it needs the same network and volume."""
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = pod.tolerations(spec)
    affinity = _affinity(ref, spec)
    if affinity:
        pod_spec["affinity"] = affinity
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = pod.image_pull_secrets(spec)
