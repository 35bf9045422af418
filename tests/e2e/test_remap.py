"""The harness's remap rules (see tests/e2e/kubelet.py) on the strings they must handle."""

from pathlib import Path

from tests.e2e.remap import expand_vars, remap_paths, remap_ports

MOUNTS = [("/etc/mlflow", Path("/tmp/pod/rootfs/etc/mlflow")), ("/data", Path("/tmp/pod/rootfs/data"))]


def test_mount_paths_are_rewritten_at_path_boundaries_only() -> None:
    assert remap_paths("/etc/mlflow/auth.ini", MOUNTS) == "/tmp/pod/rootfs/etc/mlflow/auth.ini"
    assert remap_paths("sqlite:////data/mlflow.db", MOUNTS) == "sqlite:////tmp/pod/rootfs/data/mlflow.db"
    assert remap_paths("--artifacts-destination=/data", MOUNTS) == "--artifacts-destination=/tmp/pod/rootfs/data"
    # look-alikes stay untouched
    assert remap_paths("/etc/mlflow-old/x /var/data /database", MOUNTS) == "/etc/mlflow-old/x /var/data /database"
    assert remap_paths("s3://bucket/data/x", MOUNTS) == "s3://bucket/data/x"


def test_kubernetes_var_expansion() -> None:
    env = {"A": "1", "DB": "postgresql://x"}
    assert expand_vars("$(A)-$(DB)", env) == "1-postgresql://x"
    assert expand_vars("$(MISSING) $$(A)", env) == "$(MISSING) $(A)"


def test_ports_and_wildcard_hosts_are_remapped() -> None:
    argv = ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--workers", "2"]
    assert remap_ports(argv, {5000: 41234}) == [
        "mlflow", "server", "--host", "127.0.0.1", "--port", "41234", "--workers", "2",
    ]
    assert remap_ports(["--port=5000", "--host=0.0.0.0"], {5000: 7}) == ["--port=7", "--host=127.0.0.1"]
    assert remap_ports(["--bind", "0.0.0.0:5000"], {5000: 7}) == ["--bind", "127.0.0.1:7"]
    # a number that is not a port value stays
    assert remap_ports(["--workers", "5000"], {5000: 7}) == ["--workers", "5000"]


def test_service_proxy_keeps_the_service_host_header() -> None:
    """A request to the Service URL reaches the local backend with Host unchanged."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests

    from tests.e2e.network import ServiceProxy, ServiceTable

    class Echo(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            out = json.dumps({"host": self.headers["Host"], "path": self.path, "len": len(body)}).encode()
            self.send_response(201)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    backend = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    table = ServiceTable()
    table.set_service("mlflow", "team-a", 5000, backend.server_address[1])
    try:
        with ServiceProxy(table) as proxy:
            proxies = {"http": proxy.url}
            url = "http://mlflow.team-a.svc.cluster.local:5000/a/b?x=1"
            resp = requests.put(url, data=b"x" * 100_000, proxies=proxies, timeout=10)
            assert resp.status_code == 201
            assert resp.json() == {"host": "mlflow.team-a.svc.cluster.local:5000", "path": "/a/b?x=1", "len": 100_000}
            assert requests.get("http://other.team-a.svc:5000/", proxies=proxies, timeout=10).status_code == 502
    finally:
        backend.shutdown()
        backend.server_close()


def test_remapped_paths_are_not_remapped_again() -> None:
    """Local twins live under /tmp, itself a mount path in the rendered pods."""
    mounts = [("/tmp", Path("/tmp/root/rootfs/tmp")), ("/data", Path("/tmp/root/rootfs/data"))]
    assert remap_paths("/data/x:/tmp/y", mounts) == "/tmp/root/rootfs/data/x:/tmp/root/rootfs/tmp/y"
