"""What is left of the emulator-based operator harness: `RecordingKube`, used only by
tests/chart/test_rbac.py until that file moves to the real control plane (the operator's
own tests run on it: tests/operator/harness.py, test_rbac_real.py). Delete with it."""
from __future__ import annotations

import collections

import aiohttp.web
import kmock

from tests.support import kubeproto as kp
from tests.support.kube import KubeEmulator

def _verb(method: str, name: str | None, watch: str | None) -> str:
    if method == "GET":
        return "watch" if watch in ("true", "1") else ("get" if name else "list")
    return {"POST": "create", "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())


class RecordingKube(KubeEmulator):
    """Counts API calls as RBAC sees them: (verb, group, resource[/subresource]).

    A local subclass, not a gap of the emulator: only these tests need the full tally
    (the emulator keeps a short request log on purpose)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.api_calls: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # resource -> the labelSelector of each list/watch request on it ('' = none)
        self.list_selectors: collections.defaultdict[str, set[str]] = collections.defaultdict(set)

    async def _parse(self, raw: aiohttp.web.BaseRequest) -> kmock.Request:
        request = await super()._parse(raw)
        path = kp.parse_path(raw.path)
        if path is not None and path.plural:
            resource = path.plural + (f"/{path.subresource}" if path.subresource else "")
            verb = _verb(raw.method, path.name, raw.query.get("watch"))
            self.api_calls[(verb, path.group or "", resource)] += 1
            if verb in ("list", "watch"):
                self.list_selectors[resource].add(raw.query.get("labelSelector", ""))
        return request
