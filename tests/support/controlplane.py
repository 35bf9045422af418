"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager.

Test support, not product code. The binaries come from `scripts/build-control-plane`
(v1.35, built from Go modules, linked into .cache/bin). `scripts/cluster up|down|env`
and the session fixture in tests/conftest.py both use this module.

    plane = ControlPlane(Path("/tmp/cp")).start()    # ready when /readyz answers ok
    plane.url                 # https://127.0.0.1:<port>
    plane.kubeconfig          # admin kubeconfig (client cert in system:masters)
    plane.issuer              # ServiceAccount issuer; OIDC discovery is served there
    plane.stop()              # stops exactly the processes start() made

What is real: everything but the kubelet and kube-proxy (no container runtime here; the
kubelet harness in tests/e2e plays them). Deliberate settings, each with its reason:
- kube-controller-manager runs every default controller except the node lifecycle one:
  it would taint and evict pods of a node whose kubelet does not post a Lease every few
  seconds, and the test kubelet only reports pod status.
- etcd runs without fsync and kube-apiserver with a short event TTL: the data is
  throw-away and the machine small.
- Every controller uses its own ServiceAccount (`--use-service-account-credentials`), so
  RBAC judges them as in a kubeadm cluster.
"""
from __future__ import annotations

import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "bin"
SERVICE_CIDR = "10.96.0.0/16"
# What `kubectl create token` and projected volumes ask for when no audience is given.
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
KCM_CONTROLLERS = "*,-node-lifecycle-controller"


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG).

    Linux ties this to the thread that forked: start() from a thread that lives as long
    as the control plane should (every caller uses the main thread)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _cert(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: tuple[x509.Name, rsa.RSAPrivateKey] | None,
          *, ca: bool = False, sans: list[x509.GeneralName] | None = None, client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


@dataclass
class Pki:
    """A CA, the API server's serving certificate, client certificates, the SA signing key."""

    directory: Path

    def create(self) -> Pki:
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca_name = _name("mlflow-operator-test-ca")
        ca = _cert(ca_name, ca_key, None, ca=True)
        self._write("ca", ca, ca_key)
        server_key = _key()
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"), x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("10.96.0.1"))]
        self._write("apiserver", _cert(_name("kube-apiserver"), server_key, (ca_name, ca_key), sans=sans), server_key)
        for user, group in (("admin", "system:masters"), ("system:kube-controller-manager", None)):
            key = _key()
            self._write(user.replace(":", "-"), _cert(_name(user, group), key, (ca_name, ca_key), client=True), key)
        (self.directory / "sa.key").write_bytes(_pem_key(_key()))
        return self

    def _write(self, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
        (self.directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path = self.directory / f"{stem}.key"
        path.write_bytes(_pem_key(key))
        path.chmod(0o600)

    def path(self, name: str) -> str:
        return str(self.directory / name)


def write_kubeconfig(path: Path, server: str, ca: str, *, cert: str | None = None, key: str | None = None,
                     token: str | None = None, user: str = "admin", namespace: str = "default") -> Path:
    credentials: dict[str, str] = {"token": token} if token else {"client-certificate": cert or "",
                                                                   "client-key": key or ""}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": namespace}}],
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML: no yaml import needed here
    path.chmod(0o600)
    return path


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager as child processes of this one."""

    directory: Path
    apiserver_port: int = field(default_factory=free_port)
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0
    # The processes end with this one even when it is killed (a timed-out test run, a
    # killed demo or benchmark); only `scripts/cluster up` lets them outlive it.
    die_with_parent: bool = True

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def pki(self) -> Pki:
        return Pki(self.directory / "pki")

    @property
    def ca_file(self) -> str:
        return self.pki.path("ca.crt")

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "admin.kubeconfig"

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- lifecycle ----

    def start(self, timeout: float = 120) -> ControlPlane:
        started = time.monotonic()
        for binary in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if not (BIN / binary).exists():
                raise RuntimeError(f"{BIN / binary} is missing: run scripts/build-control-plane")
        pki = self.pki.create()
        write_kubeconfig(self.kubeconfig, self.url, self.ca_file, cert=pki.path("admin.crt"), key=pki.path("admin.key"))
        write_kubeconfig(self.directory / "kcm.kubeconfig", self.url, self.ca_file, user="kcm",
                         cert=pki.path("system-kube-controller-manager.crt"),
                         key=pki.path("system-kube-controller-manager.key"))
        try:
            self._spawn("etcd", self._etcd_args())
            self._spawn("kube-apiserver", self._apiserver_args())
            self._wait_ready(started + timeout)
            self._spawn("kube-controller-manager", self._kcm_args())
            self._wait_default_service_account(started + timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        self._write_state()
        return self

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.directory / "etcd-data", ignore_errors=True)
        (self.directory / "state.json").unlink(missing_ok=True)

    def _spawn(self, name: str, args: list[str]) -> None:
        with open(self.directory / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(BIN / name), *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not them: stop() orders the shutdown
                preexec_fn=_terminate_with_parent if self.die_with_parent else None)

    def _write_state(self) -> None:
        state = {"url": self.url, "kubeconfig": str(self.kubeconfig),
                 "pids": {name: proc.pid for name, proc in self.processes.items()}}
        (self.directory / "state.json").write_text(json.dumps(state, indent=2))

    # ---- flags ----

    def _etcd_args(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        return [
            "--name", "test", "--data-dir", str(self.directory / "etcd-data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--unsafe-no-fsync", "--log-level", "warn",
            "--quota-backend-bytes", str(4 << 30),
        ]

    def _apiserver_args(self) -> list[str]:
        p = self.pki.path
        return [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={p('apiserver.crt')}", f"--tls-private-key-file={p('apiserver.key')}",
            f"--client-ca-file={p('ca.crt')}",
            f"--service-account-issuer={self.issuer}", f"--service-account-key-file={p('sa.key')}",
            f"--service-account-signing-key-file={p('sa.key')}", f"--api-audiences={API_AUDIENCE}",
            "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none", "--allow-privileged=false", "--profiling=false",
            "--event-ttl=15m", f"--cert-dir={self.directory / 'apiserver-certs'}",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,ResourceQuota",
        ]

    def _kcm_args(self) -> list[str]:
        p = self.pki.path
        kubeconfig = str(self.directory / "kcm.kubeconfig")
        return [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}", f"--cert-dir={self.directory / 'kcm-certs'}",
            f"--controllers={KCM_CONTROLLERS}", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p('sa.key')}", f"--root-ca-file={p('ca.crt')}",
            f"--cluster-signing-cert-file={p('ca.crt')}", f"--cluster-signing-key-file={p('ca.key')}",
            "--leader-elect=false", f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Tests delete many objects: collect them quickly.
            "--concurrent-gc-syncs=10", "--concurrent-namespace-syncs=5",
        ]

    # ---- readiness ----

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(self.pki.path("admin.crt"), self.pki.path("admin.key"))
        return context

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, context=self._ssl(), timeout=5) as response:
            return json.load(response)

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}")

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=self._ssl(), timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready in time:\n{self.log('kube-apiserver')[-4000:]}")

    def _wait_default_service_account(self, deadline: float) -> None:
        """kube-controller-manager is up when it made the `default` ServiceAccount."""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self.get_json("/api/v1/namespaces/default/serviceaccounts/default")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"kube-controller-manager made no default ServiceAccount:\n"
                           f"{self.log('kube-controller-manager')[-4000:]}")


def _runs(pid: int, binary: str) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return False
    return Path(argv0).name == binary


def load_state(directory: Path) -> dict | None:
    state_file = directory / "state.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return state if all(_runs(pid, name) for name, pid in state["pids"].items()) else None


def stop_from_state(directory: Path) -> bool:
    """Stop a control plane another process started (scripts/cluster down)."""
    state_file = directory / "state.json"
    if not state_file.exists():
        return False
    pids = json.loads(state_file.read_text())["pids"]
    for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
        pid = pids.get(name)
        if pid is None or not _runs(pid, name):
            continue  # gone already, or the pid now belongs to another program
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(150):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory / "etcd-data", ignore_errors=True)
    state_file.unlink()
    return True
