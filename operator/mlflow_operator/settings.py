"""Operator options (from the CLI) and the Kopf settings derived from them."""
from __future__ import annotations

import dataclasses
import logging

import kopf

from mlflow_operator.guards import GuardRails
from mlflow_operator.model import DEFAULT_IMAGE
from mlflow_operator.webhook.options import WebhookOptions

PREFIX = "mlflow-operator.dev"
FINALIZER = f"{PREFIX}/finalizer"
# Characters that make a --namespace value a pattern in Kopf's syntax (`team-*`,
# `!kube-*`, `a,b`): they never occur in a namespace name.
PATTERN_CHARS = frozenset("*?!,")


@dataclasses.dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    standalone: bool = False
    peering: str | None = None
    liveness: str | None = None
    # How often every MLflowServer is reconciled even without a change (drift repair).
    resync_seconds: float = 60.0
    # Watch requests are re-opened this often, so a silently dropped connection heals.
    watch_timeout_seconds: int = 300
    worker_limit: int = 20
    api_pool_size: int = 0  # 0: one connection per worker thread, plus a few
    event_level: int = logging.WARNING
    # Server image of MLflowServers that leave spec.image unset (mirrors, air-gapped clusters).
    default_server_image: str = DEFAULT_IMAGE
    # --allowed-images and --allow-host-path: what a CR author may make the operator run.
    guard_rails: GuardRails = GuardRails()
    # The Pod injection webhook (mlflow_operator.webhook); None: not served.
    webhook: WebhookOptions | None = None
    # Port of the Prometheus metrics endpoint (mlflow_operator.metrics); 0: not served.
    metrics_port: int = 0

    @property
    def clusterwide(self) -> bool:
        return self.all_namespaces or not self.namespaces

    @property
    def namespace_patterns(self) -> bool:
        """True when a --namespace is a Kopf pattern (glob, negation, list), not a name."""
        return any(ch in ns for ns in self.namespaces for ch in PATTERN_CHARS)


def configure(settings: kopf.OperatorSettings, options: Options) -> None:
    # Kopf's own log lines become Events only from WARNING up; the handlers post their own
    # Normal Events for important steps, so "Handler succeeded" noise stays out of kubectl.
    settings.posting.loggers = True  # Kopf's own handler failures become Events too
    settings.posting.level = options.event_level
    settings.posting.reporting_component = "mlflow-operator"
    settings.posting.event_name_prefix = "mlflow-operator-"
    settings.watching.server_timeout = options.watch_timeout_seconds
    settings.watching.client_timeout = options.watch_timeout_seconds + 30
    settings.watching.connect_timeout = 10
    # Bounded concurrency where it costs: the threads that run the (sync) handlers and
    # their API calls. Kopf's per-object queue workers stay unlimited: they are cheap
    # asyncio tasks, and a limit there holds each slot for `idle_timeout` after its last
    # event (measured: 200 objects took 50 s with 20 slots, 3 s without).
    settings.queueing.worker_limit = None
    settings.execution.max_workers = options.worker_limit
    settings.networking.request_timeout = 60
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration")
    # Namespaced operators with exact names must not list namespaces (they may not be
    # allowed to). Patterns need the listing: without it Kopf keeps only the exact names
    # and silently ignores every pattern. (Kopf then also watches CRDs, as cluster-wide.)
    settings.scanning.disabled = not options.clusterwide and not options.namespace_patterns
    settings.peering.standalone = options.standalone
    settings.peering.clusterwide = options.clusterwide
    if options.peering:
        settings.peering.name = options.peering
        settings.peering.mandatory = True
