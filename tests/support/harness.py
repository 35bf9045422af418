"""Serving from a thread, and the sync helpers of the ``kube`` fixture (a KubeEmulator mixin).

``KubeEmulator().start()`` serves real HTTP on 127.0.0.1 (a free port unless
``port=`` is given) from a daemon thread running its own event loop;
``stop()`` ends open watches and shuts it down. Any process can reach
``kube.url``.

Every helper runs on the emulator's own event loop (the server thread), so
it is safe from sync tests, async tests (any loop) and fixture code alike,
and it triggers the same watch events as an HTTP call would. Errors are
``tests.support.kubeproto.ApiError`` (``.code``, ``.reason``, ``.message``).

Resources are named ``'v1/pods'``, ``'apps/v1/deployments'``,
``'mlflow-operator.dev/v1alpha1/mlflowservers'`` (or a ``kmock.resource``);
cluster-scoped objects take ``namespace=None``.

    kube.url                                   # http://127.0.0.1:<port>
    kube.write_kubeconfig(tmp_path / 'kc')     # for kubernetes client, Kopf, kubectl
    kube.create_namespace('jobs')
    uid = kube.create_service_account('jobs', 'trainer')
    token = kube.token_for('jobs', 'trainer', ['mlflow'])   # valid for TokenReview
    kube.delete_service_account('jobs', 'trainer')          # its tokens now fail review
    kube.create('v1/configmaps', {'metadata': {'name': 'c'}}, namespace='jobs')
    kube.get('v1/configmaps', 'jobs', 'c')                  # dict, or None when absent
    kube.patch('apps/v1/deployments', 'ns', 'd', {...}, subresource='status')
    kube.list('v1/configmaps', 'jobs', labels='app=x')      # list of dicts
    kube.delete('v1/configmaps', 'jobs', 'c')
    kube.mark_deployment_available('ns', 'd')  # no controllers: tests play them
    kube.mark_job_finished('ns', 'migrate', succeeded=True)
    kube.tokenreview.count / .callers / .delay / .fail_status / .disconnect / .reset()
    kube.trim_requests()                       # long tests: forget kmock's request log
    kube.dead_url()                            # a URL where nothing listens (refused)
    with kube.offline(): ...                   # the API is down (refused), then back
    kube.collect_garbage = True                # opt-in: dependents go with their owner
    kube.require_namespaces = True             # opt-in: no objects in missing Namespaces

kmock's own API stays available: ``kube.objects[res, ns, name]`` (every
version, for assertions; write through the helpers above, not into it),
``kube.resources`` (declare more resources before clients discover them) and
reactions that answer before the emulation, e.g.
``kube['post /apis/authentication.k8s.io/v1/tokenreviews'] << 503``. kmock's
aiohttp client shortcuts (``kmock.get('/path')``) are replaced by the helpers
of the same names. The request log (``list(kube)``, ``kube['get'][...]``)
keeps the last ``kube.request_log_limit`` (300) requests; watch history keeps
``kube.event_log_limit`` (10000) events.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp.web
import kmock
import yaml

from tests.support import kubeproto as kp
from tests.support import tokens

if TYPE_CHECKING:
    from tests.support.kube import KubeEmulator

T = TypeVar('T')
ResourceRef = str | kmock.resource

ADMIN_TOKEN = 'emulator-admin-token'  # any non-empty bearer is accepted


class KubeHelpers:

    # ---- a real HTTP server on its own loop in a background thread ----

    @property
    def url(self: KubeEmulator) -> str:
        return f'http://{self.host}:{self.port}'

    def start(self: KubeEmulator) -> KubeEmulator:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve(ready, failure)),
                                        name='kube-emulator', daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self: KubeEmulator) -> None:
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None:
            self._thread.join(30)
        self._loop = self._thread = self._stop_event = None

    async def _serve(self: KubeEmulator, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            self._loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
            async with self:
                self._web_server = aiohttp.web.Server(self, access_log=None, handler_cancellation=True)
                runner = aiohttp.web.ServerRunner(self._web_server, shutdown_timeout=2)
                await runner.setup()
                self._site = aiohttp.web.TCPSite(runner, self.host, self.port)
                await self._site.start()
                self.port = runner.addresses[0][1]
                ready.set()
                await self._stop_event.wait()
                for watcher in self._watchers:
                    watcher.queue.put_nowait(None)
                await runner.cleanup()
        except BaseException as exc:  # surfaced by start()
            failure.append(exc)
            ready.set()

    @contextlib.contextmanager
    def offline(self: KubeEmulator) -> Iterator[None]:
        """The API server is down inside the block: connections refused, open ones dropped.

        Everything answers again afterwards, on the same URL, with the same state.
        """
        self._sync_await(self._go_offline)
        try:
            yield
        finally:
            self._sync_await(self._go_online)

    async def _go_offline(self: KubeEmulator) -> None:
        await self._site.stop()
        for connection in list(self._web_server.connections):
            connection.force_close()  # pooled keep-alive connections must fail too

    async def _go_online(self: KubeEmulator) -> None:
        self._site = aiohttp.web.TCPSite(self._site._runner, self.host, self.port)
        await self._site.start()

    def _sync_await(self: KubeEmulator, fn: Callable[[], Awaitable[T]]) -> T:
        if self._loop is None:
            raise RuntimeError('the emulator is not running: call start() first')
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout=30)

    # ---- sync helpers ----

    def _sync(self: KubeEmulator, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._loop is None:
            raise RuntimeError('the emulator is not running: call start() first')
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)

        async def call() -> T:
            return fn(*args, **kwargs)
        result = asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)
        return copy.deepcopy(result)  # never hand out the stored dicts

    def create(self: KubeEmulator, resource: ResourceRef, body: dict[str, Any],
               namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or (body.get('metadata') or {}).get('namespace')
        return self._sync(self.op_create, kmock.resource(resource), ns, body)

    def get(self: KubeEmulator, resource: ResourceRef, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self._sync(self._live, kmock.resource(resource), namespace, name)

    def list(self: KubeEmulator, resource: ResourceRef, namespace: str | None = None,
             labels: str | None = None) -> list[dict[str, Any]]:
        return self._sync(self.op_list, kmock.resource(resource), namespace, labels)['items']

    def patch(self: KubeEmulator, resource: ResourceRef, namespace: str | None, name: str,
              patch: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        return self._sync(self.op_patch, kmock.resource(resource), namespace, name, patch,
                          'application/merge-patch+json', subresource)[1]

    def delete(self: KubeEmulator, resource: ResourceRef, namespace: str | None, name: str) -> dict[str, Any]:
        return self._sync(self.op_delete, kmock.resource(resource), namespace, name)

    def create_namespace(self: KubeEmulator, namespace: str) -> dict[str, Any]:
        """Create a Namespace (idempotent: returns the existing one)."""
        return self.get('v1/namespaces', None, namespace) or self.create(
            'v1/namespaces', {'metadata': {'name': namespace}})

    def create_service_account(self: KubeEmulator, namespace: str, name: str) -> str:
        """Create a ServiceAccount; returns its uid (the tokens' `serviceaccount.uid`)."""
        sa = self.create('v1/serviceaccounts', {'metadata': {'name': name}}, namespace=namespace)
        return sa['metadata']['uid']

    def delete_service_account(self: KubeEmulator, namespace: str, name: str) -> None:
        self.delete('v1/serviceaccounts', namespace, name)

    def token_for(self: KubeEmulator, namespace: str, name: str, audiences: Sequence[str], **kw: Any) -> str:
        """A token of this ServiceAccount (its current uid unless `uid=` is given).

        Keyword arguments as ``tests.support.tokens.mint_token``. For a missing
        ServiceAccount the token carries a random uid (and fails review).
        """
        if kw.get('uid') is None:
            sa = self.get('v1/serviceaccounts', namespace, name)
            kw['uid'] = sa['metadata']['uid'] if sa else None
        return tokens.mint_token(namespace, name, audiences, **kw)

    def mark_deployment_available(self: KubeEmulator, namespace: str, name: str) -> dict[str, Any]:
        """Play the Deployment controller: all replicas ready, Available=True."""
        deployment = self.get('apps/v1/deployments', namespace, name)
        if deployment is None:
            raise LookupError(f'no Deployment {namespace}/{name}')
        replicas = (deployment.get('spec') or {}).get('replicas', 1)
        status = kp.deployment_available_status(deployment, replicas, deployment['metadata']['creationTimestamp'])
        return self.patch('apps/v1/deployments', namespace, name, {'status': status}, subresource='status')

    def mark_job_finished(self: KubeEmulator, namespace: str, name: str, *, succeeded: bool = True) -> dict[str, Any]:
        """Play the Job controller: Complete (or Failed) with one pod."""
        job = self.get('batch/v1/jobs', namespace, name)
        if job is None:
            raise LookupError(f'no Job {namespace}/{name}')
        now = job['metadata']['creationTimestamp']
        kind = 'Complete' if succeeded else 'Failed'
        status = {'succeeded' if succeeded else 'failed': 1, 'startTime': now,
                  'conditions': [{'type': kind, 'status': 'True', 'lastProbeTime': now,
                                  'lastTransitionTime': now}]}
        if succeeded:
            status['completionTime'] = now
        return self.patch('batch/v1/jobs', namespace, name, {'status': status}, subresource='status')

    def write_kubeconfig(self: KubeEmulator, path: str | os.PathLike[str], *, token: str = ADMIN_TOKEN,
                         namespace: str = 'default', server: str | None = None) -> Path:
        """A kubeconfig (plain http, bearer token) for the client, Kopf and kubectl."""
        config = {
            'apiVersion': 'v1', 'kind': 'Config', 'current-context': 'emulator', 'preferences': {},
            'clusters': [{'name': 'emulator', 'cluster': {'server': server or self.url}}],
            'users': [{'name': 'emulator-user', 'user': {'token': token}}],
            'contexts': [{'name': 'emulator', 'context': {
                'cluster': 'emulator', 'user': 'emulator-user', 'namespace': namespace}}],
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        target.chmod(0o600)
        return target

    @staticmethod
    def dead_url() -> str:
        """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        return f'http://127.0.0.1:{port}'
