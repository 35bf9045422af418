"""ASGI scopes and MLflow's native FastAPI route paths, for tests of the route-level shortcuts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def scope(path: str, method: str = "GET", kind: str = "http", root_path: str = "") -> dict[str, Any]:
    return {"type": kind, "method": method, "path": path, "root_path": root_path,
            "headers": [(b"host", b"localhost:5000")], "query_string": b""}


def native_paths(routes: Sequence[Any], prefix: str = "") -> list[tuple[str, str]]:
    """(method, concrete path) for every native route, path parameters filled in."""
    found: list[tuple[str, str]] = []
    for route in routes:
        router = getattr(route, "original_router", None)
        if router is not None:
            found += native_paths(router.routes, prefix + getattr(route.include_context, "prefix", ""))
        elif path := getattr(route, "path", None):
            concrete = "/".join("x1" if part.startswith("{") else part for part in (prefix + path).split("/"))
            found += [(method, concrete) for method in sorted(getattr(route, "methods", None) or {"GET"})]
    return found
