"""Cluster DNS + Service routing for local processes, as a plain-HTTP forward proxy.

A job in a cluster reaches MLflow at its Service URL (``http://<svc>.<ns>.svc.cluster.local:5000``)
and sends that name in the ``Host`` header, which the server's ``--allowed-hosts`` check
must accept. Locally the server listens on 127.0.0.1:<free port>. Rather than rewrite the
job's tracking URI (which would hide a wrong ``--allowed-hosts``), job processes get
``HTTP_PROXY`` pointing here: ``requests`` then sends absolute-URI requests to this proxy,
which looks the host:port up in the Service table and forwards the request unchanged,
``Host`` header included. Unknown hosts get 502 (like a name that does not resolve).
Only plain HTTP (no CONNECT): in-cluster MLflow traffic is plain HTTP.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
}


class ServiceTable:
    """``host:port`` (every DNS form of a Service) -> local ``(host, port)``; thread-safe."""

    def __init__(self) -> None:
        self._routes: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def set_service(self, name: str, namespace: str, port: int, local_port: int, domain: str = "cluster.local") -> None:
        with self._lock:
            for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{domain}"):
                self._routes[f"{host}:{port}"] = ("127.0.0.1", local_port)
                if port == 80:
                    self._routes[host] = ("127.0.0.1", local_port)

    def lookup(self, hostport: str) -> tuple[str, int] | None:
        with self._lock:
            return self._routes.get(hostport.lower())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    table: ServiceTable

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # request lines would go to stderr of the test run

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        url = urlsplit(self.path)
        hostport = url.netloc or self.headers.get("Host", "")
        if ":" not in hostport:
            hostport = f"{hostport}:80"
        target = self.table.lookup(hostport)
        body = self._body()
        if target is None:
            self._reply(502, f"no Service answers at {hostport}\n".encode())
            return
        path = url.path + (f"?{url.query}" if url.query else "") or "/"
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*target, timeout=120)
        try:
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self._reply(502, f"Service backend {hostport} unreachable: {exc}\n".encode())
            return
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _reply(self, status: int, text: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward


class ServiceProxy:
    """Runs the proxy on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, table: ServiceTable) -> None:
        handler = type("Handler", (_Handler,), {"table": table})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="service-proxy", daemon=True)
        self.table = table

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ServiceProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
