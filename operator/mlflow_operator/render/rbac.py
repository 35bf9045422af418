"""The server's identity: a ServiceAccount allowed to create TokenReviews."""

from __future__ import annotations

from mlflow_operator import names
from mlflow_operator.model import MLflowServerSpec, ServerRef
from mlflow_operator.render.common import Manifest, metadata

# Built-in ClusterRole granting create on tokenreviews and subjectaccessreviews: the
# least privilege that lets the server verify tokens.
AUTH_DELEGATOR = "system:auth-delegator"


def render_service_account(ref: ServerRef, spec: MLflowServerSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(
            ref,
            names.service_account_name(ref),
            "server",
            annotations=spec.service_account_annotations or None,
        ),
        # Only the server pod mounts a token (it opts in); nothing else using this
        # account gets one by accident.
        "automountServiceAccountToken": False,
    }


def needs_token_review(spec: MLflowServerSpec) -> bool:
    """With tokenValidation JWKS the server never creates a TokenReview: it then reads only
    the OIDC discovery document and the JWKS, which every ServiceAccount may read by
    default (ClusterRoleBinding system:service-account-issuer-discovery, group
    system:serviceaccounts), so it gets no cluster-wide binding at all."""
    return spec.auth.token_validation != "JWKS"


def render_cluster_role_binding(ref: ServerRef, spec: MLflowServerSpec | None = None) -> Manifest | None:
    """Cluster-scoped, so no ownerReference: labels name the owner, a finalizer cleans it
    (and reconcile deletes it when the spec stops needing it). None: not needed."""
    if spec is not None and not needs_token_review(spec):
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": names.cluster_role_binding_name(ref),
            "labels": names.owner_labels(ref),
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": AUTH_DELEGATOR,
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": names.service_account_name(ref),
                "namespace": ref.namespace,
            }
        ],
    }


def render_workspaces_binding(ref: ServerRef, spec: MLflowServerSpec) -> Manifest | None:
    """With workspaces.mode Namespaces: the server's ServiceAccount bound to the chart's
    ClusterRole mlflow-operator:workspace-server (list/watch namespaces, create
    SubjectAccessReviews). Cluster-scoped like the binding above. None: not needed."""
    if not spec.workspaces.enabled:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": names.workspaces_binding_name(ref), "labels": names.owner_labels(ref)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": names.WORKSPACE_SERVER_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": names.service_account_name(ref), "namespace": ref.namespace}],
    }
