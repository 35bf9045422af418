"""Command-line options of the injection webhook (`mlflow-operator run --webhook-...`).

Light on purpose: the CLI imports this module before knowing whether it will run the
operator (no aiohttp, no cryptography here).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(\d+)([smhd])$")


@dataclasses.dataclass(frozen=True)
class WebhookOptions:
    # The MutatingWebhookConfiguration whose caBundle the operator keeps right.
    configuration: str
    # The Secret holding the CA and serving certificate (shared by restarts and replicas).
    secret_namespace: str
    secret_name: str
    # Names (DNS or IP) the API server uses to call us: the certificate's SANs.
    hosts: tuple[str, ...]
    listen: str = "0.0.0.0"
    port: int = 9443
    cert_validity: datetime.timedelta = datetime.timedelta(days=90)
    ca_validity: datetime.timedelta = datetime.timedelta(days=3650)


def duration(text: str) -> datetime.timedelta:
    match = _DURATION.match(text.strip())
    if not match or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d, 12h, 30m or 60s")
    return datetime.timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _secret(text: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAMESPACE/NAME")
    return namespace, name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "injection webhook", "serve the webhook that gives Pods labelled mlflow-operator.dev/server"
        " their MLflow credentials (all three of --webhook-configuration, --webhook-secret and"
        " --webhook-host turn it on)")
    group.add_argument("--webhook-configuration", metavar="NAME",
                       help="MutatingWebhookConfiguration whose caBundle the operator keeps up to date")
    group.add_argument("--webhook-secret", metavar="NAMESPACE/NAME", type=_secret,
                       help="Secret holding the webhook's CA and serving certificate")
    group.add_argument("--webhook-host", metavar="NAME", action="append",
                       help="DNS name or IP address the API server calls (repeatable; certificate SANs)")
    group.add_argument("--webhook-listen", metavar="ADDR", default="0.0.0.0",
                       help="address to listen on (default 0.0.0.0)")
    group.add_argument("--webhook-port", metavar="PORT", type=int, default=9443,
                       help="HTTPS port (default 9443)")
    group.add_argument("--webhook-cert-validity", metavar="DURATION", type=duration, default="90d",
                       help="serving certificate lifetime; renewed with a third left (default 90d)")
    group.add_argument("--webhook-ca-validity", metavar="DURATION", type=duration, default="3650d",
                       help="CA lifetime; renewed with a third left (default 3650d)")


def from_args(args: argparse.Namespace) -> WebhookOptions | None:
    """The webhook's options, None when it is off; ValueError for a partial set."""
    given = [args.webhook_configuration, args.webhook_secret, args.webhook_host]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("the webhook needs all of --webhook-configuration, --webhook-secret"
                         " and --webhook-host")
    namespace, name = args.webhook_secret
    return WebhookOptions(configuration=args.webhook_configuration, secret_namespace=namespace,
                          secret_name=name, hosts=tuple(args.webhook_host), listen=args.webhook_listen,
                          port=args.webhook_port, cert_validity=args.webhook_cert_validity,
                          ca_validity=args.webhook_ca_validity)
