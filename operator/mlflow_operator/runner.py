"""Starting Kopf with our handlers, settings and logging (`mlflow-operator run`)."""
from __future__ import annotations

import logging

import kopf
import kubernetes.config

from mlflow_operator import handlers, metrics
from mlflow_operator.api import KubeApi
from mlflow_operator.settings import Options, configure

_FORMATS = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}


class _QuietChildEvents(logging.Filter):
    """Drop Kopf's "Handler 'child-...' succeeded." lines: one per event of every owned
    object (thousands at scale) and nothing an operator admin acts on. Failures stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and isinstance(record.msg, str)
                    and record.msg.startswith("Handler 'child-") and record.msg.endswith(" succeeded."))


def configure_logging(log_format: str = "json", verbose: bool = False) -> None:
    kopf.configure(verbose=verbose, log_format=_FORMATS[log_format], log_prefix=False)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietChildEvents())
    # urllib3 logs full URLs and, at debug level, headers (the bearer token): keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


class NoCredentials(Exception):
    """Neither in-cluster credentials nor a usable kubeconfig were found."""


def build(options: Options) -> tuple[kopf.OperatorRegistry, kopf.OperatorSettings, kopf.Memo]:
    registry = kopf.OperatorRegistry()
    # A bare registry has no login handler: Kopf's own reads in-cluster config or KUBECONFIG.
    kopf.on.login(registry=registry)(kopf.login_via_client)
    handlers.register(registry, options)
    settings = kopf.OperatorSettings()
    configure(settings, options)
    handlers.filter_children_server_side(settings)
    if options.webhook is not None:
        from mlflow_operator.webhook import server as webhook_server  # aiohttp, cryptography

        webhook_server.register(registry, settings, options.webhook)
    try:
        api = KubeApi.from_environment(pool_size=options.api_pool_size or options.worker_limit + 4)
    except kubernetes.config.ConfigException as exc:
        raise NoCredentials(f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc})") from None
    memo = handlers.make_memo(api, options)
    return registry, settings, memo


def run(options: Options, *, log_format: str = "json", verbose: bool = False) -> None:
    configure_logging(log_format, verbose)
    registry, settings, memo = build(options)
    if options.metrics_port:
        metrics.serve(options.metrics_port)
    kopf.run(
        registry=registry,
        settings=settings,
        memo=memo,
        standalone=options.standalone or None,
        peering_name=options.peering,
        clusterwide=options.clusterwide,
        namespaces=options.namespaces,
        liveness_endpoint=options.liveness,
    )
