"""Secrets generated once: the admin credentials and the Flask secret key.

They carry the create-only apply policy: the handlers create them when missing and never
patch them, so a password or key is never regenerated behind the user's back.
"""

from __future__ import annotations

from mlflow_operator import names
from mlflow_operator.model import GeneratedSecrets, MLflowServerSpec, ServerRef
from mlflow_operator.render.common import Manifest, metadata

_CREATE_ONLY = {names.APPLY_POLICY_ANNOTATION: names.CREATE_ONLY}


def render_admin_secret(
    ref: ServerRef, spec: MLflowServerSpec, generated: GeneratedSecrets
) -> Manifest | None:
    """None when the user supplies auth.basicAuth.existingAdminSecret."""
    if spec.auth.basic_auth.existing_admin_secret:
        return None
    if not generated.admin_password:
        raise ValueError("no admin password was passed in for the generated admin Secret")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            ref, names.admin_secret_name(ref, spec), "auth", annotations=_CREATE_ONLY
        ),
        "type": "kubernetes.io/basic-auth",
        "stringData": {
            names.ADMIN_USERNAME_KEY: spec.auth.admin_username,
            names.ADMIN_PASSWORD_KEY: generated.admin_password,
        },
    }


def render_secret_key_secret(ref: ServerRef, generated: GeneratedSecrets) -> Manifest:
    """Flask's session-signing key, shared by all replicas (MLFLOW_FLASK_SERVER_SECRET_KEY)."""
    if not generated.flask_secret_key:
        raise ValueError("no Flask secret key was passed in")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            ref, names.secret_key_secret_name(ref), "auth", annotations=_CREATE_ONLY
        ),
        "type": "Opaque",
        "stringData": {names.SECRET_KEY_KEY: generated.flask_secret_key},
    }
