"""A TLS proxy in front of the real API server: counts requests and injects faults.

Test support. Clients reach kube-apiserver through it with bearer tokens (it forwards
the Authorization header; client certificates end at the proxy, so give identities a
token: tests.support.kubeapi.Kube.token_for). Watches and other streams pass through.

    proxy = FaultProxy(plane.url, plane.ca_file, plane.pki).start()
    proxy.url                                         # https://127.0.0.1:<port>, same CA
    proxy.count('POST', '/apis/authentication.k8s.io/v1/tokenreviews')
    rule = proxy.fail(500, 'POST', r'/tokenreviews$', times=1)   # then passes through
    proxy.delay(3.0, 'POST', r'/tokenreviews$')       # answers late
    proxy.disconnect('POST', r'/tokenreviews$')       # drops the connection, no answer
    with proxy.offline(): ...                         # refused, open connections dropped
    proxy.remove(rule); proxy.reset()                 # rules off, counts zeroed
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiohttp.web

from tests.support import controlplane

# Hop-by-hop headers are the proxy's own business, never forwarded.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
        "proxy-authorization", "proxy-connection", "content-length"}


@dataclass
class Rule:
    action: str                      # fail | delay | disconnect
    method: str | None
    path: re.Pattern[str]
    status: int = 500
    seconds: float = 0.0
    times: int | None = None         # None = until removed

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and bool(self.path.search(path)) \
            and (self.times is None or self.times > 0)


@dataclass
class FaultProxy:
    upstream: str
    ca_file: str
    pki: controlplane.Pki
    port: int = field(default_factory=controlplane.free_port)
    rules: list[Rule] = field(default_factory=list)
    seen: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # ---- the test-facing switches ----

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(n for (m, p), n in self.seen.items() if m == method and re.search(path, p))

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def fail(self, status: int, method: str | None = None, path: str = "", times: int | None = None) -> Rule:
        return self._add(Rule("fail", method, re.compile(path), status=status, times=times))

    def delay(self, seconds: float, method: str | None = None, path: str = "", times: int | None = None) -> Rule:
        return self._add(Rule("delay", method, re.compile(path), seconds=seconds, times=times))

    def disconnect(self, method: str | None = None, path: str = "", times: int | None = None) -> Rule:
        return self._add(Rule("disconnect", method, re.compile(path), times=times))

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()

    @contextlib.contextmanager
    def offline(self) -> Iterator[None]:
        self._call(self._go_offline)
        try:
            yield
        finally:
            self._call(self._go_online)

    # ---- lifecycle ----

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(ready)), daemon=True,
                                        name="fault-proxy")
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)

    def _call(self, fn: Any) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(fn(), self._loop).result(30)

    def _server_ssl(self) -> ssl.SSLContext:
        # The proxy presents the API server's own certificate (its SANs cover 127.0.0.1),
        # so clients keep the cluster's CA and nothing else changes for them.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.path("apiserver.crt"), self.pki.path("apiserver.key"))
        return context

    async def _serve(self, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        upstream_ssl = ssl.create_default_context(cafile=self.ca_file)
        self._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=upstream_ssl, limit=0),
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                                             auto_decompress=False)
        self._server = aiohttp.web.Server(self._handle, access_log=None, handler_cancellation=True)
        self._runner = aiohttp.web.ServerRunner(self._server, shutdown_timeout=1)
        await self._runner.setup()
        await self._go_online()
        ready.set()
        await self._stop.wait()
        await self._runner.cleanup()
        await self._client.close()

    async def _go_offline(self) -> None:
        await self._site.stop()
        for connection in list(self._server.connections):
            connection.force_close()

    async def _go_online(self) -> None:
        self._site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._server_ssl())
        await self._site.start()

    def _match(self, method: str, path: str) -> list[Rule]:
        with self._lock:
            self.seen[(method, path)] += 1
            chosen = [rule for rule in self.rules if rule.matches(method, path)]
            for rule in chosen:
                if rule.times is not None:
                    rule.times -= 1
            return chosen

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        for rule in self._match(request.method, request.path):
            if rule.action == "delay":
                await asyncio.sleep(rule.seconds)
            elif rule.action == "fail":
                return aiohttp.web.json_response(
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": rule.status,
                     "reason": "InternalError", "message": "injected by the test fault proxy"},
                    status=rule.status)
            elif rule.action == "disconnect":
                if request.transport is not None:
                    request.transport.close()
                raise ConnectionResetError("dropped by the test fault proxy")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        # No Content-Type of the proxy's own: aiohttp would label a bare body octet-stream, which
        # kube-apiserver refuses (415), while it reads JSON when the client sent no type
        # (the `kubernetes` Python client sends none).
        async with self._client.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                        headers=headers, data=body or None,
                                        skip_auto_headers=("Content-Type",)) as upstream:
            response = aiohttp.web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

