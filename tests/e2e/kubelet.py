"""Run a container of a rendered pod spec as a local process, the way a kubelet would.

Test support only: product code never imports this. The emulator has no nodes, so the
end-to-end test and the demo take the pod template the operator rendered (Job or
Deployment) and start its container here. Everything the process sees comes from the
manifest and from the API server (Secrets, ConfigMaps, ServiceAccount tokens); nothing
is hand-written. Because we cannot give a process its own root filesystem or network
namespace without privileges, a few things are remapped, each by one documented rule:

1. Filesystem (volumeMounts). Every volume is materialised under ``<root>`` (Secret,
   ConfigMap, projected, downwardAPI and emptyDir volumes per pod; PVCs per claim, shared
   by every pod that mounts the claim, so the migration Job and the server see the same
   sqlite file). Mount path ``/x/y`` of container ``c`` becomes
   ``<pod dir>/rootfs/c/x/y`` (a symlink to the volume, or to its ``subPath``). Because
   absolute paths are baked into what the process reads, every occurrence of a mount
   path, at a path boundary, is rewritten to its local twin in: command, args, env
   values, workingDir, and the text of files projected from Secrets/ConfigMaps (the
   rendered auth ini names ``sqlite:////data/auth.db``). One pass, longest path first
   (the twins live under /tmp, itself a mount path); literal args are rewritten before
   ``$(VAR)`` expansion, so values from Secrets are rewritten exactly once. Nothing else
   in those strings changes. Alternatives rejected: a chroot or mount namespace needs
   privileges CI does not have; ``kubeconfig``/path keys added to the ini would be
   hand-written config the operator never rendered.
2. Network (containerPorts). A pod has its own network namespace; local processes share
   one. Each declared containerPort gets a free local port (kept across restarts of one
   Deployment), and the port number is rewritten where it is an argument value
   (``--port 5000``, ``--port=5000``, ``host:5000``); a bind host of ``0.0.0.0``/``::``
   becomes ``127.0.0.1`` so nothing is exposed beyond loopback. The readinessProbe is
   resolved against the same mapping (named ports too).
3. API server. In-cluster config requires https and reads the fixed path
   ``/var/run/secrets/kubernetes.io/serviceaccount/token``; the emulator is plain http.
   So the kubelet mints a token for the pod's ServiceAccount (what TokenRequest would
   give: signed by the key the emulator trusts, bound to the SA's uid), writes a
   kubeconfig naming the emulator with that token, and sets ``KUBECONFIG``, which the
   ``kubernetes`` client, Kopf and the plugin (when its ``[k8s_auth] kubeconfig`` is
   empty) honour, like kubectl. The usual SA files (token, namespace; no ca.crt, there is
   no TLS) are still mounted at the remapped in-cluster path.
4. Image. The container image's Python environment is this repository's venv: ``PATH``
   starts with the venv's ``bin``; ``HOME`` is a per-pod directory unless the manifest
   sets it. Nothing else of the caller's environment leaks into a pod.
5. Cluster DNS. Service names (``<svc>.<ns>.svc``) do not resolve locally, so pods get
   ``HTTP_PROXY`` pointing at the harness's Service proxy (``tests.e2e.network``), which
   routes by Host to the local port of the pod behind the Service and keeps the Host
   header, so the server's ``--allowed-hosts`` check sees what it would in a cluster.

Not emulated, by design: securityContext (uid, read-only root filesystem, capabilities),
resources, startup/liveness probes, scheduling, more than one replica. The render tests
assert those on the manifests. Controllers (Job, Deployment, Service) are in
``tests.e2e.cluster``; processes in ``tests.e2e.processes``; the rules as pure functions
in ``tests.e2e.remap``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.remap import expand_vars, free_port, remap_paths, remap_ports

# (namespace, service account, audiences, expiration seconds) -> signed JWT
TokenMinter = Callable[[str, str, list[str], int], str]
# (kind, namespace, name) -> object dict or None; kind is "Secret" or "ConfigMap"
ObjectReader = Callable[[str, str, str], "dict[str, Any] | None"]

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodError(RuntimeError):
    """The pod cannot start: a missing Secret/key, an unsupported volume, ..."""


@dataclass
class Prepared:
    """A container ready to exec: everything already resolved and remapped."""

    pod: str
    container: str
    namespace: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    ports: dict[int, int]  # container port -> local port
    named_ports: dict[str, int]  # port name -> container port
    readiness: dict[str, Any] | None
    pod_dir: Path
    mounts: list[tuple[str, Path]] = field(default_factory=list)

    def local_port(self, port: int | str) -> int:
        container_port = self.named_ports[port] if isinstance(port, str) else port
        return self.ports[container_port]


@dataclass
class PodPlan:
    """A pod ready to run: init containers run to completion first, in order."""

    name: str
    namespace: str
    pod_dir: Path
    init: list[Prepared]
    main: list[Prepared]


class Kubelet:
    """Materialises pods from their specs; one instance per emulated node."""

    def __init__(
        self,
        root: Path,
        read_object: ObjectReader,
        mint_token: TokenMinter,
        api_server: str,
        bin_dir: Path | None = None,
        proxy_url: str | None = None,
    ) -> None:
        self.root = root
        self.read_object = read_object
        self.mint_token = mint_token
        self.api_server = api_server
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.proxy_url = proxy_url

    # -- preparation -------------------------------------------------------------

    def prepare(
        self,
        pod_name: str,
        namespace: str,
        pod_spec: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        port_hint: Mapping[int, int] | None = None,
    ) -> PodPlan:
        """Materialise the pod's volumes once; resolve every container into argv/env/cwd.

        ``port_hint``: container port -> local port to reuse (a restarted server keeps its
        URL, as a Service would).
        """
        metadata = {"name": pod_name, "namespace": namespace, **(metadata or {})}
        pod_dir = self.root / "pods" / namespace / pod_name
        if pod_dir.exists():
            shutil.rmtree(pod_dir)  # a new pod starts from fresh ephemeral volumes
        pod_dir.mkdir(parents=True)
        sa_name = pod_spec.get("serviceAccountName") or "default"
        volumes = {
            v["name"]: self._materialise_volume(v, namespace, sa_name, metadata, pod_dir)
            for v in pod_spec.get("volumes", [])
        }
        if pod_spec.get("automountServiceAccountToken", True):
            volumes.setdefault("kube-api-access", self._default_sa_dir(namespace, sa_name, pod_dir))
        kubeconfig = self._write_kubeconfig(namespace, sa_name, pod_dir)
        home = pod_dir / "home"  # the image's home directory
        home.mkdir()
        containers = [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]
        if not pod_spec.get("containers"):
            raise PodError("pod spec has no containers")
        all_mounts: list[tuple[str, Path]] = []
        prepared = []
        for ctr in containers:
            mounts = self._mount(ctr, volumes, pod_dir / "rootfs" / ctr["name"])
            if "kube-api-access" in volumes and not any(m == SA_DIR for m, _ in mounts):
                mounts.append((SA_DIR, volumes["kube-api-access"]))
            all_mounts += mounts
            ports = {p["containerPort"]: (port_hint or {}).get(p["containerPort"]) or free_port()
                     for p in ctr.get("ports", [])}
            prepared.append(self._container(ctr, pod_name, namespace, metadata, pod_spec, mounts,
                                            kubeconfig, home, pod_dir, ports))
        # Only volumes projected from API objects hold configuration; PVCs and emptyDirs
        # hold the workload's own data, never rewritten.
        projected = [volumes[v["name"]] for v in pod_spec.get("volumes", [])
                     if not {"persistentVolumeClaim", "emptyDir"} & set(v)]
        self._remap_file_contents(projected, all_mounts)
        n_init = len(pod_spec.get("initContainers", []))
        return PodPlan(pod_name, namespace, pod_dir, prepared[:n_init], prepared[n_init:])

    def _container(
        self,
        ctr: Mapping[str, Any],
        pod_name: str,
        namespace: str,
        metadata: Mapping[str, Any],
        pod_spec: Mapping[str, Any],
        mounts: list[tuple[str, Path]],
        kubeconfig: Path,
        home: Path,
        pod_dir: Path,
        ports: dict[int, int],
    ) -> Prepared:
        named = {p["name"]: p["containerPort"] for p in ctr.get("ports", []) if p.get("name")}
        env = self._resolve_env(ctr, namespace, metadata, pod_spec, mounts)
        # Remap the literal text first, then expand $(VAR) with env values already remapped.
        argv = [expand_vars(remap_paths(a, mounts), env) for a in [*ctr.get("command", []), *ctr.get("args", [])]]
        if not argv:
            raise PodError(f"container {ctr['name']!r}: no command; image entrypoints are not known here")
        argv = remap_ports(argv, ports)
        base = {
            "PATH": f"{self.bin_dir}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "KUBECONFIG": str(kubeconfig),
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": self.api_server.rsplit(":", 1)[-1].strip("/"),
        }
        if self.proxy_url:  # rule 5: Service DNS names resolve through the Service proxy
            proxy = {"HTTP_PROXY": self.proxy_url, "NO_PROXY": "127.0.0.1,localhost"}
            base.update(proxy | {k.lower(): v for k, v in proxy.items()})
        cwd = Path(remap_paths(ctr["workingDir"], mounts)) if ctr.get("workingDir") else home
        return Prepared(
            pod=pod_name,
            container=ctr["name"],
            namespace=namespace,
            argv=argv,
            env={**base, **env},
            cwd=cwd,
            ports=ports,
            named_ports=named,
            readiness=ctr.get("readinessProbe"),
            pod_dir=pod_dir,
            mounts=mounts,
        )

    def _read(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        """Decoded data of a Secret/ConfigMap (text only; binaryData decoded to text too)."""
        obj = self.read_object(kind, namespace, name)
        if obj is None:
            if optional:
                return {}
            raise PodError(f"{kind} {namespace}/{name} not found")
        data: dict[str, str] = {}
        if kind == "Secret":
            for key, value in (obj.get("data") or {}).items():
                data[key] = base64.b64decode(value).decode()
            data.update(obj.get("stringData") or {})
        else:
            data.update(obj.get("data") or {})
            for key, value in (obj.get("binaryData") or {}).items():
                data[key] = base64.b64decode(value).decode()
        return data

    # -- env -------------------------------------------------------------------

    def _resolve_env(
        self,
        ctr: Mapping[str, Any],
        namespace: str,
        metadata: Mapping[str, Any],
        pod_spec: Mapping[str, Any],
        mounts: list[tuple[str, Path]],
    ) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in ctr.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if ref := source.get(key):
                    for k, v in self._read(kind, namespace, ref["name"], ref.get("optional", False)).items():
                        env[prefix + k] = v
        for item in ctr.get("env", []):
            name = item["name"]
            if "valueFrom" in item:
                value = self._value_from(item["valueFrom"], namespace, metadata, pod_spec)
                if value is None:
                    continue
            else:
                value = expand_vars(item.get("value", ""), env)
            env[name] = remap_paths(value, mounts)
        return env

    def _value_from(
        self,
        value_from: Mapping[str, Any],
        namespace: str,
        metadata: Mapping[str, Any],
        pod_spec: Mapping[str, Any],
    ) -> str | None:
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if ref := value_from.get(key):
                data = self._read(kind, namespace, ref["name"], ref.get("optional", False))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise PodError(f"{kind} {namespace}/{ref['name']} has no key {ref['key']!r}")
                return data[ref["key"]]
        if ref := value_from.get("fieldRef"):
            return self._field(ref["fieldPath"], metadata, pod_spec)
        raise PodError(f"unsupported valueFrom {sorted(value_from)}")

    @staticmethod
    def _field(path: str, metadata: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> str:
        simple = {
            "metadata.name": metadata.get("name", ""),
            "metadata.namespace": metadata.get("namespace", ""),
            "spec.serviceAccountName": pod_spec.get("serviceAccountName", "default"),
            "spec.nodeName": "local",
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
            return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
        raise PodError(f"unsupported fieldRef {path!r}")

    # -- volumes -----------------------------------------------------------------

    def _materialise_volume(
        self,
        volume: Mapping[str, Any],
        namespace: str,
        sa_name: str,
        metadata: Mapping[str, Any],
        pod_dir: Path,
    ) -> Path:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            path = self.root / "pvc" / namespace / claim
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = pod_dir / "volumes" / name
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            return path
        if "secret" in volume:
            src = volume["secret"]
            self._write_keys(path, self._read("Secret", namespace, src["secretName"], src.get("optional", False)), src)
        elif "configMap" in volume:
            src = volume["configMap"]
            self._write_keys(path, self._read("ConfigMap", namespace, src["name"], src.get("optional", False)), src)
        elif "projected" in volume:
            for source in volume["projected"].get("sources", []):
                self._project(path, source, namespace, sa_name, metadata)
        elif "downwardAPI" in volume:
            self._project(path, {"downwardAPI": volume["downwardAPI"]}, namespace, sa_name, metadata)
        else:
            raise PodError(f"volume {name!r}: unsupported type {sorted(set(volume) - {'name'})}")
        return path

    def _project(
        self,
        path: Path,
        source: Mapping[str, Any],
        namespace: str,
        sa_name: str,
        metadata: Mapping[str, Any],
    ) -> None:
        if src := source.get("secret"):
            self._write_keys(path, self._read("Secret", namespace, src["name"], src.get("optional", False)), src)
        elif src := source.get("configMap"):
            self._write_keys(path, self._read("ConfigMap", namespace, src["name"], src.get("optional", False)), src)
        elif src := source.get("serviceAccountToken"):
            audiences = [src["audience"]] if src.get("audience") else []
            token = self.mint_token(namespace, sa_name, audiences, int(src.get("expirationSeconds", 3600)))
            _write(path / src["path"], token, 0o600)
        elif src := source.get("downwardAPI"):
            for item in src.get("items", []):
                value = self._field(item["fieldRef"]["fieldPath"], metadata, {})
                _write(path / item["path"], value, 0o644)
        else:
            raise PodError(f"unsupported projected source {sorted(source)}")

    @staticmethod
    def _write_keys(path: Path, data: Mapping[str, str], src: Mapping[str, Any]) -> None:
        mode = int(src.get("defaultMode", 0o644))
        items = src.get("items")
        pairs = [(i["key"], i["path"], int(i.get("mode", mode))) for i in items] if items else [
            (k, k, mode) for k in data
        ]
        for key, rel, item_mode in pairs:
            if key not in data:
                if src.get("optional"):
                    continue
                raise PodError(f"key {key!r} not found for volume")
            _write(path / rel, data[key], item_mode)

    def _default_sa_dir(self, namespace: str, sa_name: str, pod_dir: Path) -> Path:
        path = pod_dir / "volumes" / "kube-api-access"
        path.mkdir(parents=True, exist_ok=True)
        _write(path / "token", self.mint_token(namespace, sa_name, [], 3600), 0o600)
        _write(path / "namespace", namespace, 0o644)
        return path

    def _write_kubeconfig(self, namespace: str, sa_name: str, pod_dir: Path) -> Path:
        path = pod_dir / "kubeconfig"
        write_kubeconfig(path, self.api_server, self.mint_token(namespace, sa_name, [], 3600), namespace)
        return path

    @staticmethod
    def _mount(ctr: Mapping[str, Any], volumes: Mapping[str, Path], rootfs: Path) -> list[tuple[str, Path]]:
        mounts: list[tuple[str, Path]] = []
        for mount in ctr.get("volumeMounts", []):
            if mount["name"] not in volumes:
                raise PodError(f"volumeMount {mount['name']!r} names no volume")
            source = volumes[mount["name"]]
            if sub := mount.get("subPath"):
                source = source / sub
                if not source.exists() and source.parent == volumes[mount["name"]]:
                    source.mkdir(parents=True)  # the kubelet creates a missing subPath dir
            link = rootfs / mount["mountPath"].lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)
            mounts.append((mount["mountPath"], link))
        return mounts

    @staticmethod
    def _remap_file_contents(volumes: list[Path], mounts: list[tuple[str, Path]]) -> None:
        """Rule 1 for config files: the ini the operator renders names absolute paths."""
        for path in volumes:
            for file in path.rglob("*"):
                if file.is_file() and not file.is_symlink():
                    try:
                        text = file.read_text()
                    except UnicodeDecodeError:
                        continue
                    remapped = remap_paths(text, mounts)
                    if remapped != text:
                        mode = file.stat().st_mode
                        file.chmod(0o600)
                        file.write_text(remapped)
                        file.chmod(mode & 0o777)


def write_kubeconfig(path: Path, server: str, token: str, namespace: str) -> None:
    """A kubeconfig for one identity against the emulator (rule 3)."""
    import yaml

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "pod", "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "emulator", "user": "pod", "namespace": namespace}}],
        "current-context": "pod",
    }
    _write(path, yaml.safe_dump(config), 0o600)


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)
