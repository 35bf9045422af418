"""Kopf handlers: thin adapters from Kopf's callbacks to `reconcile.run`.

* create / update / resume of an MLflowServer, and a resync timer, reconcile it and write
  `.status` through Kopf's patch (one write, only when something changed);
* events of owned children (a Job finishing, a Deployment becoming ready, a child deleted)
  reconcile the parent right away instead of waiting for the timer;
* deletion removes the cluster-scoped ClusterRoleBindings (namespaced children go with
  their ownerReferences).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import kopf

from mlflow_operator import metrics, reconcile
from mlflow_operator import status as status_mod
from mlflow_operator.api import CR_API_VERSION, RESOURCES, ApiError, ApiUnreachable, KubeApi
from mlflow_operator.model import ServerRef
from mlflow_operator.names import OWNER_NAME_LABEL, OWNER_NAMESPACE_LABEL, cluster_role_binding_names
from mlflow_operator.settings import Options

CR = ("mlflow-operator.dev/v1alpha1", "mlflowservers")
CR_RESOURCE = RESOURCES[(CR_API_VERSION, "MLflowServer")]
MANAGED = {"app.kubernetes.io/managed-by": "mlflow-operator"}
# Children whose changes matter before the next resync: status-bearing ones and the ones
# whose deletion breaks the server at once. Everything else is repaired by the timer.
WATCHED_CHILDREN = [
    ("apps/v1", "deployments"),
    ("batch/v1", "jobs"),
    ("v1", "services"),
    ("v1", "secrets"),
    ("v1", "serviceaccounts"),
    ("v1", "persistentvolumeclaims"),
]
_MISSING = object()


class Locks:
    """One lock per MLflowServer uid: its handlers, timer and child events never overlap."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def hold(self, uid: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(uid, threading.Lock())
        with lock:
            yield

    def forget(self, uid: str) -> None:
        with self._guard:
            self._locks.pop(uid, None)


def make_memo(api: KubeApi, options: Options) -> kopf.Memo:
    # Kopf gives each object a shallow copy of this memo: the containers stay shared.
    return kopf.Memo(api=api, options=options, locks=Locks(), seen={}, statuses={})


def _reconcile(body: Mapping[str, Any], memo: kopf.Memo, logger: logging.Logger) -> dict[str, Any] | None:
    """Reconcile one MLflowServer; the new status, or None when it would not change."""
    with memo.locks.hold(body["metadata"]["uid"]):
        outcome = _run(body, memo)
    return _report(body, outcome, logger)


def _run(body: Mapping[str, Any], memo: kopf.Memo) -> reconcile.Outcome:
    """One reconcile pass; the caller holds the object's lock."""
    uid = body["metadata"]["uid"]
    with metrics.timed_reconcile():
        # Handlers, the timer and child events may each hold an older body: the status
        # this process wrote last is the fresher base for transitions (no double Events).
        outcome = reconcile.run(memo.api, body, memo.statuses.get(uid),
                                memo.options.default_server_image, memo.options.guard_rails)
    memo.statuses[uid] = outcome.status
    return outcome


def _report(body: Mapping[str, Any], outcome: reconcile.Outcome, logger: logging.Logger) -> dict[str, Any] | None:
    """Metrics, Events and a log line for a pass; its status if that changed."""
    uid = body["metadata"]["uid"]
    degraded = status_mod.condition(outcome.status, status_mod.DEGRADED)
    metrics.record(uid, degraded.get("reason") if degraded.get("status") == "True" else None)
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=message)
    if outcome.created or outcome.updated or outcome.deleted:
        logger.info("Applied: created %s, updated %s, deleted %s; phase %s",
                    outcome.created, outcome.updated, outcome.deleted, outcome.status["phase"])
    if not status_mod.changed(body.get("status"), outcome.status):
        return None
    return outcome.status


def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger,
              retry: int = 0, **_: Any) -> None:
    try:
        new = _reconcile(body, memo, logger)
    except ApiError as exc:
        raise _temporary(exc, retry) from None
    if new is not None:
        patch.status.update(new)


def _temporary(exc: ApiError, retry: int) -> kopf.TemporaryError:
    """Usually transient (API server restarting, a conflict): retry with a growing delay,
    logged by Kopf as one line. The message names the call and the server's reason, never
    a body. An unreachable server is retried at most 30 s apart: a failed connection costs
    nothing, and the server should recover soon after the API server does."""
    cap = 30 if isinstance(exc, ApiUnreachable) else 300
    return kopf.TemporaryError(str(exc), delay=min(cap, 5 * 2 ** min(retry, 6)))


def on_delete(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, retry: int = 0, **_: Any) -> None:
    try:
        _cleanup(body, memo, logger)
    except ApiError as exc:
        raise _temporary(exc, retry) from None


def _cleanup(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger) -> None:
    meta = body["metadata"]
    ref = ServerRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    binding = RESOURCES[("rbac.authorization.k8s.io/v1", "ClusterRoleBinding")]
    with memo.locks.hold(ref.uid):
        for name in cluster_role_binding_names(ref):
            live = memo.api.get(binding, None, name)
            labels = (live or {}).get("metadata", {}).get("labels") or {}
            # Only ours: a binding with that name but other owner labels is left alone.
            if live is not None and labels.get(OWNER_NAMESPACE_LABEL) == ref.namespace \
                    and labels.get(OWNER_NAME_LABEL) == ref.name:
                memo.api.delete(binding, None, name)
                logger.info("Deleted ClusterRoleBinding/%s", name)
    memo.locks.forget(ref.uid)
    memo.statuses.pop(ref.uid, None)
    metrics.forget(ref.uid)


def _owner(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of the MLflowServer controlling this child."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "MLflowServer" and ref.get("controller") \
                and str(ref.get("apiVersion", "")).startswith("mlflow-operator.dev/"):
            return meta.get("namespace") or "", ref["name"], ref.get("uid", "")
    return None


def _summary(body: Mapping[str, Any]) -> Any:
    """What of a child's state the parent's status depends on (spec edits by us excluded)."""
    st = body.get("status") or {}
    if body.get("kind") == "Job":
        return status_mod.Migration.from_job("", body).state
    if body.get("kind") == "Deployment":
        return tuple(st.get(k) for k in ("readyReplicas", "updatedReplicas",
                                          "availableReplicas", "observedGeneration"))
    return None


def on_child_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo,
                   logger: logging.Logger, **_: Any) -> None:
    owner = _owner(body)
    if owner is None:
        return
    key = (body.get("kind"), body["metadata"].get("namespace"), body["metadata"]["name"])
    if event.get("type") == "DELETED":
        memo.seen.pop(key, None)
    else:
        summary = _summary(body)
        previous = memo.seen.get(key, _MISSING)
        memo.seen[key] = summary
        # A first sighting is our own create or the initial listing: the parent's own
        # handlers (create/resume) already account for it.
        if previous is _MISSING or previous == summary:
            return
    _reconcile_parent(memo, owner, logger)


def _reconcile_parent(memo: kopf.Memo, owner: tuple[str, str, str], logger: logging.Logger) -> None:
    namespace, name, uid = owner
    try:
        # Read, reconcile and write under the object's lock: a status computed from this
        # read can then never land after one a handler computed from a newer spec (e.g. a
        # refused image's Degraded overwritten by the status of the spec before it).
        with memo.locks.hold(uid):
            parent = memo.api.get(CR_RESOURCE, namespace, name)
            if parent is None or parent["metadata"].get("uid") != uid \
                    or parent["metadata"].get("deletionTimestamp"):
                return
            new = _report(parent, _run(parent, memo), logger)
            if new is not None:
                memo.api.patch(CR_RESOURCE, namespace, name, {"status": new}, subresource="status")
    except ApiError as exc:
        # The timer retries; a child event must not turn into a retry storm.
        logger.warning("Reconcile of %s/%s after a child change failed: %s", namespace, name, exc)


def filter_children_server_side(settings: kopf.OperatorSettings) -> None:
    """Ask the API server for our children only.

    The handlers' `labels=` filter runs in the operator, after the API server has sent
    every object of the kind: every Secret of the cluster would flow through (and sit in
    memory of) an operator that only cares about its own.
    """
    selector = ",".join(f"{key}={value}" for key, value in MANAGED.items())
    for api_version, plural in WATCHED_CHILDREN:
        settings.watching.label_selectors[api_version, plural] = selector


def register(registry: kopf.OperatorRegistry, options: Options) -> None:
    for cause in (kopf.on.create, kopf.on.update, kopf.on.resume):
        cause(*CR, registry=registry, id="reconcile")(on_change)
    kopf.timer(*CR, registry=registry, id="resync", interval=options.resync_seconds,
               initial_delay=options.resync_seconds)(on_change)
    kopf.on.delete(*CR, registry=registry, id="cleanup")(on_delete)
    for api_version, plural in WATCHED_CHILDREN:
        kopf.on.event(api_version, plural, registry=registry, labels=MANAGED,
                      id=f"child-{plural}")(on_child_event)
