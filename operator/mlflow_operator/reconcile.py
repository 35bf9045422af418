"""One reconcile pass of an MLflowServer: spec -> inputs -> render -> apply -> status.

No Kopf here (the handlers adapt it), so the same pass serves create/update/resume, the
resync timer and child events. Problems the user must fix (a bad spec, a missing Secret,
a failed migration, a name clash) become a Degraded status and a Warning Event, never an
exception: raising would make Kopf retry in a loop that cannot succeed. API errors do
raise (`ApiError`): they are usually transient and Kopf retries them with a backoff.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mlflow_operator import names, secrets
from mlflow_operator import status as st
from mlflow_operator.api import RESOURCES, ApiError, KubeApi
from mlflow_operator.apply import ApplyResult, ConflictError, apply_all, prune
from mlflow_operator.guards import GuardRails
from mlflow_operator.model import (DEFAULT_IMAGE, GeneratedSecrets, MLflowServerSpec, ServerRef,
                                   SpecError, StoreUris, parse_spec)
from mlflow_operator.render import render_all
from mlflow_operator.render.monitoring import KIND as SERVICE_MONITOR
from mlflow_operator.render.monitoring import service_monitor_name

SECRET = RESOURCES[("v1", "Secret")]
DEPLOYMENT = RESOURCES[("apps/v1", "Deployment")]
CLUSTER_ROLE_BINDING = RESOURCES[("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")]
JOB = RESOURCES[("batch/v1", "Job")]
# Kinds that exist only for some specs: when the spec stops asking for one, it is deleted.
OPTIONAL = [("networking.k8s.io/v1", "Ingress", names.ingress_name),
            ("networking.k8s.io/v1", "NetworkPolicy", names.network_policy_name),
            ("policy/v1", "PodDisruptionBudget", names.pdb_name),
            ("monitoring.coreos.com/v1", SERVICE_MONITOR, service_monitor_name)]


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)


def server_ref(body: Mapping[str, Any]) -> ServerRef:
    meta = body["metadata"]
    return ServerRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def read_store_uris(api: KubeApi, ref: ServerRef, spec: MLflowServerSpec) -> StoreUris:
    refs = spec.secret_refs()
    values = {role: secrets.read_key(api, ref.namespace, key_ref.name, key_ref.key)
              for role, key_ref in refs.items()}
    return StoreUris(backend_store=values.get("backendStore"),
                     auth_database=values.get("authDatabase"))


def check_user_secrets(api: KubeApi, ref: ServerRef, spec: MLflowServerSpec) -> None:
    """Secrets the pods mount or read by reference: missing ones would only show up as
    pods stuck in CreateContainerConfigError, and an admin password MLflow refuses as a
    crash-looping pod, so they are reported here instead."""
    # The pod reads it whether or not HTTP Basic is on: MLflow bootstraps its admin anyway.
    existing = spec.auth.basic_auth.existing_admin_secret
    if existing:
        password = secrets.read_key(api, ref.namespace, existing, names.ADMIN_PASSWORD_KEY)
        secrets.check_admin_password(ref.namespace, existing, password)
        if spec.monitoring.service_monitor.enabled:  # Prometheus reads the username from it
            secrets.read_key(api, ref.namespace, existing, names.ADMIN_USERNAME_KEY)
    if spec.artifacts.credentials_secret:
        if api.get(SECRET, ref.namespace, spec.artifacts.credentials_secret) is None:
            raise secrets.MissingSecret(ref.namespace, spec.artifacts.credentials_secret)


def _read_generated(api: KubeApi, ref: ServerRef, name: str, key: str,
                    known: dict[str, dict[str, Any] | None]) -> str | None:
    """The stored value, None when the Secret does not exist yet."""
    secret = api.get(SECRET, ref.namespace, name)
    known[f"Secret/{name}"] = secret
    # A damaged Secret raises: never paper over it with a fresh value.
    return None if secret is None else secrets.required_value(secret, ref.namespace, name, key)


def load_generated(api: KubeApi, ref: ServerRef, spec: MLflowServerSpec,
                   known: dict[str, dict[str, Any] | None]) -> GeneratedSecrets:
    """Read the generated values back, generating only those whose Secret is missing.

    The live Secrets (or None) are recorded in `known` so apply does not fetch them again.
    """
    flask_key = _read_generated(api, ref, names.secret_key_secret_name(ref), names.SECRET_KEY_KEY, known)
    password, admin_name = None, None
    if not spec.auth.basic_auth.existing_admin_secret:
        admin_name = names.admin_secret_name(ref, spec)
        password = _read_generated(api, ref, admin_name, names.ADMIN_PASSWORD_KEY, known)
    if admin_name and password is None:
        # The config Secret exists once a server was set up: its admin is in the auth
        # database by now, with the old password. (A lost Flask key only ends sessions.)
        config_name = names.config_secret_name(ref)
        config = api.get(SECRET, ref.namespace, config_name)
        known[f"Secret/{config_name}"] = config
        if config is not None:
            raise secrets.LostSecret(ref.namespace, admin_name)
        password = secrets.generate_password()
    return GeneratedSecrets(flask_secret_key=flask_key or secrets.generate_secret_key(),
                            admin_password=password)


def _split(objects: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """Everything before the rollout, the Deployment(s), and the migration Job's name."""
    # The ServiceMonitor comes after the Deployment: a cluster without its CRD makes the
    # server Degraded (ServiceMonitorCRDMissing) but still running.
    after = ("Deployment", SERVICE_MONITOR)
    before = [o for o in objects if o["kind"] not in after]
    rollout = [o for o in objects if o["kind"] in after]
    jobs = [o["metadata"]["name"] for o in objects if o["kind"] == "Job"]
    return before, rollout, (jobs[0] if jobs else None)


def _stale(ref: ServerRef, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objects}
    return [{"apiVersion": api_version, "kind": kind,
             "metadata": {"name": name_of(ref), "namespace": ref.namespace}}
            for api_version, kind, name_of in OPTIONAL
            if (kind, name_of(ref)) not in rendered]


def _prune_optional(api: KubeApi, ref: ServerRef, objects: list[dict[str, Any]]) -> list[str]:
    stale = _stale(ref, objects)
    deleted = prune(api, [o for o in stale if o["kind"] != SERVICE_MONITOR], ref.uid)
    try:
        deleted += prune(api, [o for o in stale if o["kind"] == SERVICE_MONITOR], ref.uid)
    except ApiError as exc:
        # Without the chart's ServiceMonitor rule (rbac.serviceMonitors) the operator can
        # neither have made one nor read one: nothing to delete.
        if exc.status != 403:
            raise
    return deleted


def _prune_cluster_role_binding(api: KubeApi, ref: ServerRef, objects: list[dict[str, Any]]) -> list[str]:
    """A binding the spec no longer asks for goes (the auth-delegator one when
    tokenValidation became JWKS, the workspaces one when workspaces.mode became None), but
    only ours (its owner labels name this MLflowServer; cluster-scoped, it has no
    ownerReference)."""
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRoleBinding"}
    deleted = []
    for name in names.cluster_role_binding_names(ref):
        if name in rendered:
            continue
        live = api.get(CLUSTER_ROLE_BINDING, None, name)
        labels = (live or {}).get("metadata", {}).get("labels") or {}
        if live is None or labels.get(names.OWNER_NAMESPACE_LABEL) != ref.namespace \
                or labels.get(names.OWNER_NAME_LABEL) != ref.name:
            continue
        if api.delete(CLUSTER_ROLE_BINDING, None, name):
            deleted.append(f"ClusterRoleBinding/{name}")
    return deleted


def _finished_old_jobs(api: KubeApi, ref: ServerRef, current: str) -> list[dict[str, Any]]:
    """Migration Jobs of earlier images/databases, once they no longer run."""
    selector = ",".join(f"{k}={v}" for k, v in names.labels(ref, "migration").items())
    return [{"apiVersion": "batch/v1", "kind": "Job", "metadata": job["metadata"]}
            for job in api.list(JOB, ref.namespace, selector)
            if job["metadata"]["name"] != current
            and st.Migration.from_job("", job).state in ("Succeeded", "Failed")]


def _apply_and_gate(api: KubeApi, ref: ServerRef, spec: MLflowServerSpec, objects: list[dict[str, Any]],
                    known: dict[str, dict[str, Any] | None], spec_changed: bool, previous: Mapping[str, Any],
                    ) -> tuple[ApplyResult, st.Migration | None, st.Rollout, list[str]]:
    before, rollout_objs, job_name = _split(objects)
    result = apply_all(api, before, known=known)
    migration = st.Migration.from_job(job_name, result.live.get(f"Job/{job_name}")) if job_name else None
    if migration is None or migration.state == "Succeeded":
        result.merge(apply_all(api, rollout_objs))
        deployment = result.live.get(f"Deployment/{names.deployment_name(ref)}")
    else:
        # The rollout waits for the migration; an older Deployment keeps serving meanwhile.
        deployment = api.get(DEPLOYMENT, ref.namespace, names.deployment_name(ref))
    # An optional object can only become stale through a spec change (or a change the
    # operator has not finished handling, as after a restart): skip the reads otherwise.
    deleted = _prune_optional(api, ref, objects) if spec_changed else []
    if spec_changed:
        deleted += _prune_cluster_role_binding(api, ref, objects)
    if migration is not None and migration.state == "Succeeded" \
            and previous.get("migration") != {"job": migration.job, "state": "Succeeded"}:
        # The new migration is done: earlier migration Jobs (and their pods) can go.
        deleted += prune(api, _finished_old_jobs(api, ref, migration.job), ref.uid)
    return result, migration, st.Rollout.from_deployment(spec.replicas, deployment), deleted


# API answers that retrying cannot fix, only a change by a human: shown as Degraded.
_PERMANENT = {400: "Rejected", 422: "Rejected", 403: "Forbidden"}


def run(api: KubeApi, body: Mapping[str, Any], previous: Mapping[str, Any] | None = None,
        default_image: str = DEFAULT_IMAGE, guards: GuardRails = GuardRails()) -> Outcome:
    """`previous`: the last status written, if the caller knows a fresher one than the body's.
    `default_image`: the server image when the spec leaves `image` unset.
    `guards`: the operator's --allowed-images / --allow-host-path rails."""
    ref, generation = server_ref(body), int(body["metadata"].get("generation") or 0)
    previous = previous if previous is not None else (body.get("status") or {})
    try:
        names.validate_ref(ref)
        spec = parse_spec(body.get("spec"), default_image)
    except SpecError as exc:
        return _finish(previous, st.Observation(generation, problem=st.Problem(exc.reason, exc.message)))
    identity = dict(url=names.external_url(spec) or names.server_url(ref, spec),
                    audience=names.audience(spec, ref),
                    admin_secret=names.admin_secret_name(ref, spec) if spec.auth.basic_auth.enabled else None)

    def degraded(reason: str, message: str) -> Outcome:
        return _finish(previous, st.Observation(generation, problem=st.Problem(reason, message), **identity))

    known: dict[str, dict[str, Any] | None] = {}
    try:
        guards.check(spec)  # before any read: a refused spec costs no API call
        uris = read_store_uris(api, ref, spec)
        check_user_secrets(api, ref, spec)
        generated = load_generated(api, ref, spec, known)
        objects = render_all(ref, spec, generated, uris)
        spec_changed = previous.get("observedGeneration") != generation \
            or st.condition(previous, st.DEGRADED).get("status") != "False"
        result, migration, rollout, deleted = _apply_and_gate(api, ref, spec, objects, known,
                                                              spec_changed, previous)
    except secrets.SecretProblem as exc:
        return degraded(exc.reason, str(exc))
    except SpecError as exc:  # render-time checks (e.g. a name the API server would reject)
        return degraded(exc.reason, exc.message)
    except ConflictError as exc:
        return degraded("OwnershipConflict", str(exc))
    except ApiError as exc:
        if exc.status == 404 and exc.kind == SERVICE_MONITOR:
            return degraded("ServiceMonitorCRDMissing", "spec.monitoring.serviceMonitor.enabled"
                            " needs the Prometheus Operator's ServiceMonitor CRD"
                            " (servicemonitors.monitoring.coreos.com), which this cluster does"
                            " not have: install it or turn the ServiceMonitor off. The server"
                            " itself is deployed")
        if exc.status not in _PERMANENT:
            raise  # transient or unexpected: the handlers retry with a backoff
        return degraded(_PERMANENT[exc.status], str(exc))
    problem = None
    if migration is not None and migration.state == "Failed":
        problem = st.Problem("MigrationFailed", f"Database migration Job {migration.job} failed;"
                             f" see its pod logs (kubectl logs job/{migration.job})")
    obs = st.Observation(generation, problem=problem, migration=migration, rollout=rollout, **identity)
    outcome = _finish(previous, obs)
    outcome.created, outcome.updated, outcome.deleted = result.created, result.updated, deleted
    outcome.events[:0] = _apply_events(result, deleted)
    return outcome


def _apply_events(result: ApplyResult, deleted: list[str]) -> list[tuple[str, str, str]]:
    # One Event per kind of change, listing the objects: readable, and cheap for the API.
    events = []
    for reason, items in (("Created", result.created), ("Updated", result.updated), ("Deleted", deleted)):
        if items:
            events.append(("Normal", reason, f"{reason} {', '.join(items)}"))
    return events


def _finish(previous: Mapping[str, Any], obs: st.Observation) -> Outcome:
    new = st.compute(obs, previous)
    return Outcome(status=new, events=list(st.transitions(previous, new)))

