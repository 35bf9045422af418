"""Plain values passed between the handlers and the renderers (no pydantic, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


class SpecError(ValueError):
    """An MLflowServer spec the operator cannot act on.

    `reason` is CamelCase (for conditions and Events); `message` is for humans and
    never contains secret values. `problems`: one line per problem, each starting with
    the path of its field and ending with its own reason
    (`spec.tolerations[1].operator: ... (InvalidSpec)`).

    A ValueError so that pydantic collects it like its own field errors: one validation
    reports every rule a spec breaks, not only the first (see `model.parse_spec`).
    """

    def __init__(self, reason: str, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.problems = problems or (f"{message} ({reason})",)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class ServerRef:
    """Identity of one MLflowServer object."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class GeneratedSecrets:
    """Values the operator generates once and keeps in Secrets; never regenerated.

    The handlers generate them only when the Secrets do not exist yet and otherwise read
    them back. `admin_password` is None when the user supplies
    `auth.basicAuth.existingAdminSecret` (nothing to render then).
    """

    flask_secret_key: str
    admin_password: str | None = None

    def __repr__(self) -> str:  # keep values out of logs and tracebacks
        return "GeneratedSecrets(<redacted>)"


@dataclass(frozen=True)
class StoreUris:
    """Database URIs the handlers read from the user's Secrets at reconcile time.

    None means "not configured" (sqlite on the volume). See `MLflowServerSpec.secret_refs`
    for which ones to read.
    """

    backend_store: str | None = None
    auth_database: str | None = None

    def __repr__(self) -> str:  # URIs usually embed a password
        return "StoreUris(<redacted>)"
