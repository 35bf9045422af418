"""Pure renderers: typed spec in, Kubernetes manifests out. No I/O, no clock, no randomness.

Inputs besides the spec: `GeneratedSecrets` (admin password and Flask key, generated once by
the handlers) and `StoreUris` (database URIs the handlers read from the user's Secrets; see
`MLflowServerSpec.secret_refs()`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

from mlflow_operator import names
from mlflow_operator.model import GeneratedSecrets, MLflowServerSpec, ServerRef, StoreUris
from mlflow_operator.render.common import Manifest
from mlflow_operator.render.config import render_auth_ini, render_config_secret
from mlflow_operator.render.deployment import allowed_hosts, render_deployment, server_args
from mlflow_operator.render.migration import MIGRATION_HASH_LABEL, render_migration_job
from mlflow_operator.render.monitoring import render_service_monitor
from mlflow_operator.render.network import (
    render_ingress,
    render_network_policy,
    render_pdb,
    render_service,
)
from mlflow_operator.render.rbac import (
    render_cluster_role_binding,
    render_service_account,
    render_workspaces_binding,
)
from mlflow_operator.render.secrets import render_admin_secret, render_secret_key_secret
from mlflow_operator.render.storage import render_pvc

__all__ = [
    "MIGRATION_HASH_LABEL", "GeneratedSecrets", "Manifest", "Phases", "StoreUris",
    "allowed_hosts", "config_checksum", "render_admin_secret", "render_all",
    "render_auth_ini", "render_cluster_role_binding", "render_config_secret", "render_workspaces_binding",
    "render_deployment", "render_ingress", "render_migration_job", "render_network_policy",
    "render_pdb", "render_pvc", "render_secret_key_secret", "render_service",
    "render_service_account", "render_service_monitor", "server_args", "split_by_phase",
]


def config_checksum(data: dict[str, str], generated: GeneratedSecrets) -> str:
    """Keyed hash of the config Secret's data, for the pod-template annotation.

    Keyed with the Flask secret key (random, never regenerated) because the config holds
    database passwords: a plain hash in a readable annotation would let anyone test
    password guesses offline.
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    key = generated.flask_secret_key.encode()
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def render_all(
    ref: ServerRef,
    spec: MLflowServerSpec,
    generated: GeneratedSecrets,
    uris: StoreUris | None = None,
) -> list[Manifest]:
    """Every child object in apply order; the migration Job comes before the Deployment.

    Raises SpecError for a name the API server would reject, ValueError when a value the
    spec needs (a store URI, a generated secret) was not passed in.
    """
    names.validate_ref(ref)
    uris = uris or StoreUris()
    config = render_config_secret(ref, spec, uris)
    checksum = config_checksum(config["stringData"], generated)
    objects = [
        render_service_account(ref, spec),
        render_cluster_role_binding(ref, spec),
        render_workspaces_binding(ref, spec),
        config,
        render_admin_secret(ref, spec, generated),
        render_secret_key_secret(ref, generated),
        render_pvc(ref, spec),
        render_service(ref, spec),
        render_ingress(ref, spec),
        render_network_policy(ref, spec),
        render_pdb(ref, spec),
        render_migration_job(ref, spec, uris, generated),
        render_deployment(ref, spec, checksum),
        render_service_monitor(ref, spec),
    ]
    return [obj for obj in objects if obj is not None]


@dataclass(frozen=True)
class Phases:
    """`render_all`'s output split for migration gating."""

    prepare: list[Manifest]  # apply first: everything the Job and the server need
    migration: Manifest  # the Job for the current image and databases
    rollout: list[Manifest]  # apply only once `migration` has status.succeeded >= 1


def split_by_phase(objects: list[Manifest]) -> Phases:
    jobs = [o for o in objects if o["kind"] == "Job"]
    if len(jobs) != 1:
        raise ValueError(f"expected exactly one migration Job, got {len(jobs)}")
    return Phases(
        prepare=[o for o in objects if o["kind"] not in ("Job", "Deployment")],
        migration=jobs[0],
        rollout=[o for o in objects if o["kind"] == "Deployment"],
    )
