"""Cluster DNS + Service routing for local processes, as a plain-HTTP forward proxy.

A job in a cluster reaches MLflow at its Service URL (``http://<svc>.<ns>.svc.cluster.local:5000``)
and sends that name in the ``Host`` header, which the server's ``--allowed-hosts`` check
must accept. Locally the server listens on 127.0.0.1:<free port>. Rather than rewrite the
job's tracking URI (which would hide a wrong ``--allowed-hosts``), job processes get
``HTTP_PROXY`` pointing here: ``requests`` then sends absolute-URI requests to this proxy,
which resolves host:port like cluster DNS + kube-proxy (``ServiceResolver``: the real
Service and its EndpointSlices) and forwards the request unchanged, ``Host`` header
included. Unknown hosts, or a Service with no ready pod, get 502 (like a name that does
not resolve, or a connection refused). Only plain HTTP (no CONNECT): in-cluster MLflow
traffic is plain HTTP. Only the ``<svc>.<ns>[.svc[.cluster.local]]`` forms resolve: the
short form needs the client's namespace, which a proxy does not know.
``PortForward`` is the ``kubectl port-forward svc/...`` stand-in.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import requests

from tests.support.kubeapi import ApiError, Kube

# (pod IP, container port) -> local port of that pod's container, or None
LocalPort = Callable[[str, int], "int | None"]

_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
}


class ServiceResolver:
    """``host:port`` of a Service -> the local ``(host, port)`` of one of its ready pods.

    What kube-proxy does, from the same objects: the Service's port, then the
    EndpointSlices the real endpointslice controller wrote (ready endpoints only), then the
    pod IP and target port, which the process runner maps to the pod's local port.
    """

    def __init__(self, kube: Kube, local_port: LocalPort, domain: str = "cluster.local") -> None:
        self.kube, self.local_port, self.domain = kube, local_port, domain

    def lookup(self, hostport: str) -> tuple[str, int] | None:
        host, _, port_text = hostport.lower().rpartition(":")
        if not port_text.isdigit():
            host, port_text = hostport.lower(), "80"
        parts = host.removesuffix(f".svc.{self.domain}").removesuffix(".svc").split(".")
        if len(parts) != 2:  # <svc>.<ns>[.svc[.cluster.local]]: the forms a pod's resolver completes
            return None
        name, namespace = parts
        try:
            service = self.kube.get("v1/services", namespace, name)
            slices = self.kube.list("discovery.k8s.io/v1/endpointslices", namespace,
                                    labels=f"kubernetes.io/service-name={name}") if service else []
        except (ApiError, requests.RequestException):
            return None
        if service is None:
            return None
        port = next((p for p in service["spec"].get("ports", []) if p["port"] == int(port_text)), None)
        if port is None:
            return None
        for piece in slices:
            target = next((p["port"] for p in piece.get("ports") or [] if p.get("name", "") == port.get("name", "")),
                          None)
            for endpoint in piece.get("endpoints") or []:
                if target is None or not (endpoint.get("conditions") or {}).get("ready"):
                    continue
                local = self.local_port(endpoint["addresses"][0], target)
                if local is not None:
                    return ("127.0.0.1", local)
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    table: ServiceResolver

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

    def __init__(self, table: ServiceResolver) -> None:
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


class PortForward:
    """``kubectl port-forward svc/<name> <port>``: a local TCP port to a ready pod of a Service.

    The pod is picked per connection, so the forward survives a rollout (kubectl's does
    not: it sticks to one pod). Raw TCP, like kubectl's.
    """

    def __init__(self, resolver: ServiceResolver, service: str, namespace: str, port: int,
                 local_port: int = 0) -> None:
        self.resolver, self.target = resolver, f"{service}.{namespace}.svc:{port}"
        self._listener = socket.create_server(("127.0.0.1", local_port))  # 0: a free port
        self._thread = threading.Thread(target=self._accept, name="port-forward", daemon=True)
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> PortForward:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        backend = self.resolver.lookup(self.target)
        if backend is None:
            client.close()  # no ready pod: the connection is refused, as kubectl's would be
            return
        try:
            upstream = socket.create_connection(backend, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
