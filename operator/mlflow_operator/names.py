"""Names, labels and addresses derived from an MLflowServer.

Everything here is a pure function of the object's identity (and spec), so the
renderers, the handlers and the status code always agree on what a child is called.
Changing any of these renames live objects: treat them as API.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from mlflow_operator.model import (
    GeneratedSecrets,
    MLflowServerSpec,
    ServerRef,
    SpecError,
    StoreUris,
)

GROUP = "mlflow-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MLflowServer"
PLURAL = "mlflowservers"
FIELD_MANAGER = "mlflow-operator"

# Annotation on objects the operator creates once and never updates (generated Secrets).
APPLY_POLICY_ANNOTATION = f"{GROUP}/apply-policy"
CREATE_ONLY = "create-only"
# Pod-template annotation: a hash of the rendered config, so config changes roll pods.
CONFIG_CHECKSUM_ANNOTATION = f"{GROUP}/config-checksum"
# Labels on the cluster-scoped ClusterRoleBinding, which cannot carry an ownerReference.
OWNER_NAME_LABEL = f"{GROUP}/owner-name"
OWNER_NAMESPACE_LABEL = f"{GROUP}/owner-namespace"
OWNER_UID_LABEL = f"{GROUP}/owner-uid"

# The longest suffix added to the object's name is "-migrate-" + 8 hex digits; a Job's
# name ends up in its pods' `job-name` label, which is limited to 63 characters.
MAX_NAME_LENGTH = 40
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

SERVER_PORT = 5000
DATA_MOUNT = "/data"
CONFIG_MOUNT = "/etc/mlflow"
AUTH_INI_KEY = "auth.ini"
AUTH_INI_PATH = f"{CONFIG_MOUNT}/{AUTH_INI_KEY}"
BACKEND_URI_KEY = "backend-store-uri"
AUTH_DB_URI_KEY = "auth-database-uri"
ADMIN_USERNAME = "admin"
ADMIN_USERNAME_KEY = "username"
ADMIN_PASSWORD_KEY = "password"
SECRET_KEY_KEY = "secret-key"
SQLITE_BACKEND_URI = f"sqlite:///{DATA_MOUNT}/mlflow.db"
SQLITE_AUTH_URI = f"sqlite:///{DATA_MOUNT}/auth.db"
PVC_ARTIFACTS = f"{DATA_MOUNT}/artifacts"


def validate_ref(ref: ServerRef) -> None:
    """The CRD enforces this too; checked here for objects that never met the API server."""
    if len(ref.name) > MAX_NAME_LENGTH or not _NAME_RE.match(ref.name):
        raise SpecError(
            "InvalidName",
            f"metadata.name must be a DNS-1035 label (lowercase letters, digits, '-', starting"
            f" with a letter) of at most {MAX_NAME_LENGTH} characters",
        )


def deployment_name(ref: ServerRef) -> str:
    return ref.name


def service_name(ref: ServerRef) -> str:
    return ref.name


def ingress_name(ref: ServerRef) -> str:
    return ref.name


def pdb_name(ref: ServerRef) -> str:
    return ref.name


def network_policy_name(ref: ServerRef) -> str:
    return ref.name


def service_account_name(ref: ServerRef) -> str:
    return f"{ref.name}-server"


def config_secret_name(ref: ServerRef) -> str:
    return f"{ref.name}-config"


def admin_secret_name(ref: ServerRef, spec: MLflowServerSpec) -> str:
    return spec.auth.basic_auth.existing_admin_secret or f"{ref.name}-admin"


def secret_key_secret_name(ref: ServerRef) -> str:
    return f"{ref.name}-secret-key"


def pvc_name(ref: ServerRef) -> str:
    return f"{ref.name}-data"


def cluster_role_binding_name(ref: ServerRef) -> str:
    # ':' cannot appear in namespace or object names, so this never collides.
    return f"mlflow-operator:{ref.namespace}:{ref.name}:auth-delegator"


# The chart's ClusterRole for a server with workspaces.mode Namespaces: list/watch
# namespaces (the workspace provider) and create SubjectAccessReviews (auth.authorization
# Kubernetes).
WORKSPACE_SERVER_CLUSTER_ROLE = "mlflow-operator:workspace-server"


def workspaces_binding_name(ref: ServerRef) -> str:
    return f"mlflow-operator:{ref.namespace}:{ref.name}:workspaces"


def cluster_role_binding_names(ref: ServerRef) -> tuple[str, ...]:
    """Every cluster-scoped binding a server may have (cleaned by the finalizer and pruned)."""
    return cluster_role_binding_name(ref), workspaces_binding_name(ref)


def migration_hash(spec: MLflowServerSpec, uris: StoreUris, generated: GeneratedSecrets) -> str:
    """8 hex digits identifying what a migration Job migrates: image and databases.

    Any change of the database URIs, the password included, gives a new Job: a Job that
    failed on a wrong password is retried once the Secret is fixed. The hash is keyed with
    the Flask secret key (random, never regenerated), so this short value in an object
    name cannot be used to test password guesses.
    """
    backend = uris.backend_store or SQLITE_BACKEND_URI
    auth_db = uris.auth_database or SQLITE_AUTH_URI
    material = "\n".join((spec.server_image, backend, auth_db)).encode()
    key = generated.flask_secret_key.encode()
    return hmac.new(key, material, hashlib.sha256).hexdigest()[:8]


def migration_job_name(
    ref: ServerRef, spec: MLflowServerSpec, uris: StoreUris, generated: GeneratedSecrets
) -> str:
    return f"{ref.name}-migrate-{migration_hash(spec, uris, generated)}"


def service_dns(ref: ServerRef) -> str:
    """Short in-cluster DNS name of the Service (resolves through the pod's search path)."""
    return f"{service_name(ref)}.{ref.namespace}.svc"


def service_hostnames(ref: ServerRef, spec: MLflowServerSpec) -> list[str]:
    """Every name a client inside the cluster may use for the Service."""
    svc = service_name(ref)
    base = f"{svc}.{ref.namespace}"
    return [svc, base, f"{base}.svc", f"{base}.svc.{spec.server.cluster_domain}"]


def server_url(ref: ServerRef, spec: MLflowServerSpec) -> str:
    """In-cluster tracking URI for jobs (`MLFLOW_TRACKING_URI`)."""
    prefix = spec.server.static_prefix or ""
    return f"http://{service_dns(ref)}:{spec.service.port}{prefix}"


def external_url(spec: MLflowServerSpec) -> str | None:
    """URL through the Ingress, when one is enabled.

    The Ingress passes paths through unchanged, so the server's own prefix (not the
    Ingress path, which only selects what is routed) is the URL's path.
    """
    if not spec.ingress.enabled or not spec.ingress.host:
        return None
    scheme = "https" if spec.ingress.tls else "http"
    return f"{scheme}://{spec.ingress.host}{spec.server.static_prefix or ''}"


def audience(spec: MLflowServerSpec, ref: ServerRef) -> str:
    """Token audience the server accepts; jobs' projected tokens must request it.

    Default: `https://<name>.<namespace>.svc` (no cluster domain, so it is the same in
    every cluster).
    """
    return spec.auth.audience or f"https://{service_dns(ref)}"


def allowed_namespaces(spec: MLflowServerSpec, ref: ServerRef) -> list[str]:
    """Namespaces whose ServiceAccounts may log in; default: the object's own."""
    if spec.auth.allowed_namespaces is None:
        return [ref.namespace]
    return list(spec.auth.allowed_namespaces)


def selector_labels(ref: ServerRef) -> dict[str, str]:
    """Immutable Deployment selector: never add keys here."""
    return {
        "app.kubernetes.io/name": "mlflow",
        "app.kubernetes.io/instance": ref.name,
        "app.kubernetes.io/component": "server",
    }


def labels(ref: ServerRef, component: str = "server") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mlflow",
        "app.kubernetes.io/instance": ref.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "mlflow-operator",
    }


def owner_labels(ref: ServerRef) -> dict[str, str]:
    """Labels tying a cluster-scoped object to its MLflowServer (for finalizer cleanup)."""
    return {
        **labels(ref, "auth"),
        OWNER_NAME_LABEL: ref.name,
        OWNER_NAMESPACE_LABEL: ref.namespace,
        OWNER_UID_LABEL: ref.uid,
    }
