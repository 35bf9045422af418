"""Keeps the webhook's certificates in a Secret and the caBundle of its
MutatingWebhookConfiguration in step with them (blocking calls: run in a thread).

The Secret (rendered empty by the chart, so the operator needs get/patch on that one name
only) is the source of truth: every replica and every restart serves what it holds. A
renewal is written with the Secret's resourceVersion as a precondition; a replica that
loses that race adopts the winner's certificates instead.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
from collections.abc import Callable, Sequence
from typing import Any

from mlflow_operator.api import ApiError, KubeApi, Resource
from mlflow_operator.webhook import certs

SECRET = Resource("v1", "Secret", "secrets")
CONFIGURATION = Resource("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
                         "mutatingwebhookconfigurations", namespaced=False)
JSON_PATCH = "application/json-patch+json"
log = logging.getLogger(__name__)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class WebhookApi(KubeApi):
    """KubeApi with short timeouts and JSON Patch: an admission call waits for us, and the
    API server gives up after the webhook's timeoutSeconds (the chart's default: 5)."""

    def __init__(self, client: Any, timeout: float = 3.0):
        super().__init__(client, timeout)

    @classmethod
    def from_environment(cls, pool_size: int = 8) -> WebhookApi:
        api = super().from_environment(pool_size)
        # No silent urllib3 retries of a timed-out read: one attempt, then a clear answer.
        api._client.rest_client.pool_manager.connection_pool_kw["retries"] = False
        return api

    def json_patch(self, res: Resource, namespace: str | None, name: str,
                   ops: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("patch", "PATCH", res.path(namespace, name), (res.kind, name),
                          body=ops, content_type=JSON_PATCH)


@dataclasses.dataclass(frozen=True)
class Synced:
    bundle: certs.Bundle
    ca_changed: bool  # the caBundle was just updated: the API server may not trust the new CA yet


def _decode(data: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


class Keeper:
    def __init__(self, api: WebhookApi, secret_namespace: str, secret_name: str, configuration: str,
                 hosts: Sequence[str], policy: certs.Policy,
                 clock: Callable[[], datetime.datetime] = utcnow):
        self.api, self.namespace, self.secret = api, secret_namespace, secret_name
        self.configuration, self.hosts, self.policy, self.clock = configuration, list(hosts), policy, clock
        self.bundle: certs.Bundle | None = None

    @property
    def secret_ref(self) -> str:
        return f"Secret {self.namespace}/{self.secret}"

    def sync(self) -> Synced:
        """Read the Secret, renew what is due, store it, fix the caBundle; what to serve."""
        for _ in range(3):
            live = self.api.get(SECRET, self.namespace, self.secret)
            stored = certs.Bundle.from_data(_decode((live or {}).get("data")))
            # Emptied while we serve from it: a forced rotation (the README's way to rotate
            # now); the CA we serve with stays trusted while we move on.
            forced = stored is None and self.bundle is not None
            current = self.bundle if forced else stored
            wanted = certs.plan(current, self.hosts, self.clock(), self.policy, force=forced)
            if wanted == stored:
                break
            try:
                self._store(live, wanted)
            except ApiError as exc:
                if exc.status != 409:
                    raise
                continue  # another replica renewed first: read and adopt its certificates
            log.info("Webhook certificate %s in %s (valid until %s)",
                     "rotated on request" if forced else "issued" if stored is None else "renewed",
                     self.secret_ref, certs.expiry(wanted.cert))
            break
        else:
            raise RuntimeError(f"{self.secret_ref} kept changing under us")
        self.bundle = wanted
        return Synced(wanted, self._set_ca_bundle(wanted.ca_bundle(self.clock())))

    def _store(self, live: dict[str, Any] | None, bundle: certs.Bundle) -> None:
        data: dict[str, str | None] = {k: _b64(v) for k, v in bundle.to_data().items()}
        if live is None:
            self.api.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                             "metadata": {"name": self.secret, "namespace": self.namespace}, "data": data})
            return
        if certs.PREVIOUS_CA in (live.get("data") or {}) and certs.PREVIOUS_CA not in data:
            data[certs.PREVIOUS_CA] = None  # merge patch: drop the expired previous CA
        # resourceVersion makes the merge patch conditional: a concurrent renewal gets a 409.
        self.api.patch(SECRET, self.namespace, self.secret,
                       {"metadata": {"resourceVersion": live["metadata"]["resourceVersion"]}, "data": data})

    def _set_ca_bundle(self, ca_bundle: bytes) -> bool:
        """Give every webhook of our configuration this caBundle; True if any changed."""
        config = self.api.get(CONFIGURATION, None, self.configuration)
        if config is None:
            raise RuntimeError(f"MutatingWebhookConfiguration {self.configuration} does not exist")
        wanted = _b64(ca_bundle)
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                      "value": config["metadata"]["resourceVersion"]}]
        for i, hook in enumerate(config.get("webhooks") or []):
            if (hook.get("clientConfig") or {}).get("caBundle") != wanted:
                ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted})
        if len(ops) == 1:
            return False
        self.api.json_patch(CONFIGURATION, None, self.configuration, ops)
        log.info("caBundle of MutatingWebhookConfiguration %s updated (%d webhooks)",
                 self.configuration, len(ops) - 1)
        return True
