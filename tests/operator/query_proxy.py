"""The fault proxy, also keeping the query string of each request: which label selector
the operator's list and watch requests carry is decided by the API server's answer size,
not visible in anything the operator writes, so the test looks at the requests."""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs

import aiohttp.web

from tests.support.faultproxy import FaultProxy


@dataclass
class QueryRecordingProxy(FaultProxy):
    queries: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        query = {key: values[-1] for key, values in parse_qs(request.query_string).items()}
        self.queries.append((request.method, request.path, query))  # list.append is atomic
        return await super()._handle(request)

    def selectors(self, path_suffix: str) -> set[str]:
        """The labelSelector of every GET (list or watch) whose path ends with `path_suffix`
        ('' when a request had none)."""
        return {query.get("labelSelector", "") for method, path, query in list(self.queries)
                if method == "GET" and path.endswith(path_suffix)}
