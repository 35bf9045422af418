"""The harness's remaps as pure functions (the rules: tests/e2e/kubelet.py): ports and
wildcard bind hosts (rule 4), and Kubernetes ``$(VAR)`` expansion."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping

_ANY_HOST = {"0.0.0.0", "::", "[::]"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: unknown refs stay as written, ``$$`` escapes."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)", sub, text)


def remap_ports(argv: list[str], ports: Mapping[int, int]) -> list[str]:
    """Rewrite port values and wildcard bind hosts in ``argv`` (rule 2)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if prev in ("--port", "-p") and arg.isdigit() and int(arg) in ports:
            arg = str(ports[int(arg)])
        elif prev in ("--host", "-h", "--bind") and arg in _ANY_HOST:
            arg = "127.0.0.1"
        elif match := re.fullmatch(r"(--port=)(\d+)", arg):
            if int(match.group(2)) in ports:
                arg = match.group(1) + str(ports[int(match.group(2))])
        elif match := re.fullmatch(r"(--host=)(.*)", arg):
            if match.group(2) in _ANY_HOST:
                arg = "--host=127.0.0.1"
        elif match := re.fullmatch(r"(.*?)((?:0\.0\.0\.0|\[::\]|127\.0\.0\.1|localhost)?):(\d+)", arg):
            prefix, host, port = match.groups()
            if int(port) in ports and (host or prefix.endswith(("=", " "))):
                local_host = "127.0.0.1" if host in _ANY_HOST or host == "" else host
                arg = f"{prefix}{local_host}:{ports[int(port)]}"
        out.append(arg)
    return out
