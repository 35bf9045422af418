"""The injection webhook inside the operator: Kopf's admission machinery (`kopf.on.mutate`)
behind an HTTPS endpoint whose certificate comes from `keeper`.

Kopf's own `WebhookServer` reads its certificate once, or restarts its listener when cert
files change (a moment of refused connections, which with `failurePolicy: Fail` refuses
Pods). This subclass loads a renewed certificate into the live SSL context instead: new
handshakes get it, open connections finish undisturbed. Kopf's "managed" mode (it
rewrites the whole webhook configuration and needs to create it) stays off: the chart
owns the MutatingWebhookConfiguration, the operator only patches its caBundle.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import jsonpatch
import kopf
import urllib3

from mlflow_operator.api import CR_API_VERSION, RESOURCES, ApiError
from mlflow_operator.webhook import certs, inject
from mlflow_operator.webhook.keeper import Keeper, Synced, WebhookApi, utcnow
from mlflow_operator.webhook.options import WebhookOptions

HANDLER_ID = "inject"  # also the URL path: https://<host>:<port>/inject
CR_RESOURCE = RESOURCES[(CR_API_VERSION, "MLflowServer")]
# How often the Secret and the caBundle are checked even when nothing is due: another
# replica's renewal, an emptied Secret or a reset caBundle are noticed within this time.
CHECK_SECONDS = 60.0
# A new CA is in the caBundle before a certificate it signed is served; the API server's
# informer needs a moment to see the new bundle.
CA_PROPAGATION_SECONDS = 3.0
log = logging.getLogger(__name__)


def _load(context: ssl.SSLContext, bundle: certs.Bundle) -> None:
    # load_cert_chain reads files only: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="webhook-") as tmp:
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert, bundle.cert), (key, bundle.key)):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
                out.write(data)
        context.load_cert_chain(cert, key)


def _describe(exc: Exception) -> str:
    # ApiError texts are written for logs (never a Secret's content); for the rest, the type
    # and its message (a URL at most).
    return str(exc) if isinstance(exc, (ApiError, RuntimeError)) else f"{type(exc).__name__}: {exc}"


class CertServer(kopf.WebhookServer):
    """HTTPS endpoint for Kopf's admission requests, certificates kept by `keeper`."""

    def __init__(self, keeper: Keeper, *, addr: str, port: int, check_seconds: float = CHECK_SECONDS):
        super().__init__(addr=addr, port=port, host=keeper.hosts[0])
        self.keeper, self.check_seconds = keeper, check_seconds

    async def _sync(self) -> Synced:
        return await asyncio.to_thread(self.keeper.sync)

    async def _first_sync(self) -> Synced:
        """Until the certificates are in place: a missing Secret or RBAC rule is logged and
        retried (it may be fixed while we wait), never a crash loop."""
        delay = 1.0
        while True:
            try:
                return await self._sync()
            except Exception as exc:  # noqa: BLE001 - API errors, timeouts, refused connections
                log.error("Webhook certificates not ready, retrying in %.0f s: %s", delay, _describe(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _wait(self, bundle: certs.Bundle) -> float:
        due = (certs.renew_at(bundle) - utcnow()).total_seconds()
        return max(1.0, min(self.check_seconds, due))

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        synced = await self._first_sync()
        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        _load(context, synced.bundle)
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        # No access log: Kopf already logs one line per admission (and every refusal).
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, self.addr, self.port, ssl_context=context, reuse_address=True)
            await site.start()
            url = self._build_url("https", self.host or "localhost", self.port or 443, "")
            log.info("Injection webhook listening on %s:%s (certificate for %s)",
                     self.addr, self.port, ", ".join(self.keeper.hosts))
            # Kopf hands this to its configuration manager, which is off (not managed).
            yield {"url": url}
            served = synced.bundle
            while True:
                await asyncio.sleep(self._wait(served))
                try:
                    synced = await self._sync()
                except Exception as exc:  # noqa: BLE001 - the listener must outlive an API outage
                    log.error("Webhook certificate check failed (still serving the current one): %s",
                              _describe(exc))
                    continue
                if synced.bundle.cert != served.cert:
                    if synced.ca_changed:
                        await asyncio.sleep(CA_PROPAGATION_SECONDS)
                    _load(context, synced.bundle)
                    served = synced.bundle
                    log.info("Injection webhook now serves the renewed certificate")
        finally:
            await runner.cleanup()


def _read_server(api: WebhookApi, namespace: str, name: str) -> Mapping[str, Any]:
    try:
        server = api.get(CR_RESOURCE, namespace, name)
    except ApiError as exc:
        if exc.status == 403:
            raise inject.Refused(f"the operator may not read MLflowServers in namespace {namespace}"
                                 f" (it does not watch it), so MLflowServer {namespace}/{name}"
                                 f" cannot be used") from None
        # Transient (API server busy): refused now; a Job's controller creates the Pod again.
        raise kopf.AdmissionError(f"could not read MLflowServer {namespace}/{name}: {exc}", code=503) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        # No answer within WebhookApi's timeout: say so before the API server gives up on us.
        raise kopf.AdmissionError(f"could not read MLflowServer {namespace}/{name}:"
                                  f" {type(exc).__name__} (API server slow or unreachable)", code=503) from None
    if server is None:
        raise inject.Refused(f"MLflowServer {name} not found in namespace {namespace}"
                             f" (label {inject.LABEL})")
    return server


def _apply(ops: list[dict[str, Any]], body: dict[str, Any]) -> None:
    jsonpatch.apply_patch(body, ops, in_place=True)


def make_handler(api: WebhookApi) -> Any:
    # Threads of their own for the one blocking call (reading the MLflowServer): Kopf's
    # handler pool may be busy with reconciles, and the API server waits only seconds.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")

    async def inject_credentials(body: kopf.Body, patch: kopf.Patch, warnings: list[str], **_: Any) -> None:
        """Admission of a labelled Pod: add its MLflow credentials, or refuse it."""
        meta = body.get("metadata") or {}
        value = (meta.get("labels") or {}).get(inject.LABEL)
        if value is None:
            return  # the objectSelector keeps unlabelled Pods away; nothing to do anyway
        namespace = meta.get("namespace") or ""
        try:
            server_ns, name = inject.parse_label(value, namespace)
            server = await asyncio.get_running_loop().run_in_executor(pool, _read_server, api, server_ns, name)
            target, notes = inject.target_for(server, namespace)
        except inject.Refused as exc:
            raise kopf.AdmissionError(str(exc), code=400) from None
        result = inject.inject(body, target)
        warnings.extend(notes + result.warnings)
        if result.ops:
            patch.fns.append(functools.partial(_apply, result.ops))
    return inject_credentials


class _RefusalsAreWarnings(logging.Filter):
    """Kopf logs a refused Pod as an ERROR ("Webhook 'inject' failed permanently: ..."): it
    is a user's mistake the user sees at once, not an operator failure to alert on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and isinstance(record.msg, str) \
                and record.msg.startswith(f"Webhook {HANDLER_ID!r} failed permanently"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None  # the message says it all; no traceback for a refusal
        return True


def register(registry: kopf.OperatorRegistry, settings: kopf.OperatorSettings, options: WebhookOptions) -> None:
    """Serve the injection webhook from this operator process."""
    logging.getLogger("kopf.objects").addFilter(_RefusalsAreWarnings())
    api = WebhookApi.from_environment(pool_size=8)
    kopf.on.mutate("v1", "pods", registry=registry, id=HANDLER_ID, operations=["CREATE"])(make_handler(api))
    policy = certs.Policy(cert_validity=options.cert_validity, ca_validity=options.ca_validity)
    keeper = Keeper(api, options.secret_namespace, options.secret_name, options.configuration,
                    options.hosts, policy)
    check = min(CHECK_SECONDS, max(1.0, options.cert_validity.total_seconds() / 10))
    settings.admission.server = CertServer(keeper, addr=options.listen, port=options.port, check_seconds=check)
    settings.admission.managed = None
