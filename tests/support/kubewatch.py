"""Watch semantics of the emulator (a mixin of ``KubeEmulator``).

Every write emits one event into a bounded history (``event_log_limit``) and
to the live watchers of that resource. A watch:

* without ``resourceVersion`` (or ``0``, or ``sendInitialEvents=true``)
  starts with ADDED for every current object, then streams changes;
* with ``resourceVersion=N`` streams only the events after N (from the
  history), or one ERROR 410 Expired when N was compacted away;
* honours ``labelSelector``/``fieldSelector`` (an object entering or leaving
  the selection is ADDED/DELETED) and ``timeoutSeconds``; ends with a
  BOOKMARK when ``allowWatchBookmarks=true``;
* answers ``Content-Type: application/json``, one event per line.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp.web
import kmock

from tests.support import kubeproto as kp
from tests.support.kubeproto import ApiError

if TYPE_CHECKING:
    from tests.support.kube import KubeEmulator

# A watch event plus the object's previous state (to see selector transitions).
Change = tuple[dict[str, Any], dict[str, Any] | None]


@dataclass(eq=False)
class Watcher:
    resource: kmock.resource
    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)


class WatchMixin:

    def _emit(self: KubeEmulator, res: kmock.resource, kind: str, obj: dict[str, Any],
              prev: dict[str, Any] | None = None) -> None:
        change: Change = ({'type': kind, 'object': obj}, prev)
        self._events.append((self._rv, res, change))
        while len(self._events) > self.event_log_limit:
            self._compacted_rv = self._events.popleft()[0]
        for watcher in self._watchers:
            if watcher.resource == res:
                watcher.queue.put_nowait(change)

    async def _watch(self: KubeEmulator, raw: aiohttp.web.BaseRequest, res: kmock.resource, ns: str | None,
                     name: str | None) -> aiohttp.web.StreamResponse:
        # GAP: watches honour resourceVersion, selectors, timeoutSeconds; JSON content type.
        q = raw.query
        labels, fields = kp.label_selector(q.get('labelSelector')), kp.field_selector(q.get('fieldSelector'))

        def wanted(obj: dict[str, Any]) -> bool:
            meta = obj.get('metadata') or {}
            return ((ns is None or meta.get('namespace') == ns) and (name is None or meta.get('name') == name)
                    and labels(obj) and fields(obj))

        since = q.get('resourceVersion', '')
        initial_events = q.get('sendInitialEvents') == 'true'
        try:
            timeout = float(q.get('timeoutSeconds') or 1800)
        except ValueError:
            raise ApiError(400, 'BadRequest', f"invalid timeoutSeconds: {q.get('timeoutSeconds')!r}")
        if since not in ('', '0') and not since.isdigit():
            raise ApiError(400, 'BadRequest', f'invalid resource version: {since!r}')
        watcher = Watcher(res)
        self._watchers.add(watcher)  # registered in the same loop step as the backlog's snapshot
        try:
            backlog = self._backlog(res, ns, since, initial_events, wanted)
            response = aiohttp.web.StreamResponse(status=200)
            response.content_type = 'application/json'
            response.enable_chunked_encoding()
            await response.prepare(raw)
            for event in backlog:
                await response.write(json.dumps(event).encode() + b'\n')
            if not (backlog and backlog[0]['type'] == 'ERROR'):
                await self._stream_events(response, watcher, wanted, timeout)
                if q.get('allowWatchBookmarks') == 'true':
                    await self._drain(response, watcher, wanted)
                    # Built with no await since the drain: it covers exactly what was sent.
                    await response.write(json.dumps(self._bookmark(res)).encode() + b'\n')
            await response.write_eof()
            return response
        finally:
            self._watchers.discard(watcher)

    def _backlog(self: KubeEmulator, res: kmock.resource, ns: str | None, since: str, initial_events: bool,
                 wanted: Any) -> list[dict[str, Any]]:
        """What a new watch sends before live events: a replay, a history, or an error."""
        if since in ('', '0') or initial_events:
            backlog = [{'type': 'ADDED', 'object': o} for o in self._objects_of(res, ns) if wanted(o)]
            if initial_events:
                backlog.append(self._bookmark(res, initial_end=True))
            return backlog
        if int(since) < self._compacted_rv:
            return [{'type': 'ERROR', 'object': ApiError(
                410, 'Expired', f'too old resource version: {since} ({self._rv})').status()}]
        return [e for rv, r, c in self._events if r == res and rv > int(since) and (e := seen_as(c, wanted))]

    async def _stream_events(self: KubeEmulator, response: aiohttp.web.StreamResponse, watcher: Watcher,
                             wanted: Any, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                change = await asyncio.wait_for(watcher.queue.get(), remaining)
            except TimeoutError:
                return
            if not await _send(response, change, wanted):
                return

    async def _drain(self: KubeEmulator, response: aiohttp.web.StreamResponse, watcher: Watcher,
                     wanted: Any) -> None:
        """Send what was queued after the timeout: the closing BOOKMARK carries the current
        resourceVersion, so a client resuming from it would never see those changes."""
        while not watcher.queue.empty():
            if not await _send(response, watcher.queue.get_nowait(), wanted):
                return

    def _bookmark(self: KubeEmulator, res: kmock.resource, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {'resourceVersion': str(self._rv)}
        if initial_end:
            meta['annotations'] = {'k8s.io/initial-events-end': 'true'}
        return {'type': 'BOOKMARK', 'object': {
            'kind': self._info(res).kind, 'apiVersion': kp.api_version(res.group, res.version), 'metadata': meta}}


async def _send(response: aiohttp.web.StreamResponse, change: Change | None, wanted: Any) -> bool:
    """Write one change if this watch selects it; False when the server is stopping."""
    if change is None:
        return False
    if seen := seen_as(change, wanted):
        await response.write(json.dumps(seen).encode() + b'\n')
    return True


def seen_as(change: Change, wanted: Any) -> dict[str, Any] | None:
    # GAP: through a selector, an object that starts matching is ADDED and one
    # that stops matching is DELETED (as kube-apiserver's filtered watches do).
    event, prev = change
    now = wanted(event['object'])
    if event['type'] != 'MODIFIED' or prev is None:
        return event if now else None
    before = wanted(prev)
    if now and not before:
        return {**event, 'type': 'ADDED'}
    if before and not now:
        return {**event, 'type': 'DELETED'}
    return event if now else None
