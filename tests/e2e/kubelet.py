"""Turn a Pod of the real API server into sandboxed local processes, the way a kubelet would.

Test support only: product code never imports this. There is no container runtime
here, so the e2e tests and the demo run the Pods that the real ReplicaSet and Job
controllers create (bound to ``tests.support.node.Node``; started by
``tests.e2e.process_runner``) as local processes, with the "image" being this machine's
venv. Everything a container sees comes from the Pod and from the API server (Secrets,
ConfigMaps, ServiceAccount tokens from the TokenRequest API); nothing is hand-written.

What is faithful:

1. Filesystem. Each volume is materialised under ``<root>`` (Secret, ConfigMap,
   projected, downwardAPI and emptyDir volumes per pod; a PVC per claim, shared by every
   pod that mounts it, so the migration Job and the server see one sqlite file) and
   bound at its real ``mountPath`` by bubblewrap, read-only where Kubernetes makes it so
   (Secret, ConfigMap, projected, downwardAPI, ``readOnly: true``). No path is rewritten.
2. securityContext, enforced by bubblewrap (``tests.e2e.sandbox``): read-only root
   filesystem, ``runAsUser``/``runAsGroup``, ``runAsNonRoot``, no capabilities,
   ``no_new_privs``, a pid namespace of its own.
3. API access: in-cluster config, as in a pod. The ServiceAccount admission plugin of
   the real API server injects the ``kube-api-access-*`` projected volume; its token
   comes from the TokenRequest API with that volume's audiences and bound to the Pod
   (``boundObjectRef``), its ``ca.crt`` from the ``kube-root-ca.crt`` ConfigMap (the
   cluster CA), and it is mounted at ``/var/run/secrets/kubernetes.io/serviceaccount``.
   The one remap: ``KUBERNETES_SERVICE_HOST``/``_PORT`` name the API server on
   127.0.0.1 instead of the ``kubernetes`` Service's ClusterIP (there is no kube-proxy).
   With the API server on https, that is all the ``kubernetes`` client's in-cluster
   config needs, so no kubeconfig is written: more faithful than one would be (the
   plugin's ``[k8s_auth] kubeconfig`` stays empty, as rendered).

Remapped, because local processes share one network namespace:

4. Ports. Each declared containerPort gets a free local port, rewritten where it is an
   argument value (``--port 5000``, ``--port=5000``, ``host:5000``); a bind host of
   ``0.0.0.0``/``::`` becomes ``127.0.0.1``. Probes resolve through the same mapping.
5. Cluster DNS. Service names do not resolve locally, so pods get ``HTTP_PROXY``
   pointing at the Service proxy (``tests.e2e.network``), which routes by Host through
   the Service's real EndpointSlices to the pod's local port and keeps the Host header
   (the server's ``--allowed-hosts`` check sees what it would in a cluster).

Not done: image pulls (the image is this venv), resources, liveness probes, token
rotation (tokens live longer than any test), the node's own identity (reads use the
harness's admin client, not ``system:node:<name>``). The rules as pure functions are in
``tests.e2e.remap``; processes and pod status in ``tests.e2e.process_runner``.
"""

from __future__ import annotations

import base64
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e import sandbox
from tests.e2e.remap import expand_vars, free_port, remap_ports
from tests.support.kubeapi import ApiError, Kube

# Volume types whose content Kubernetes always mounts read-only.
_API_VOLUMES = {"secret", "configMap", "projected", "downwardAPI"}


class PodError(RuntimeError):
    """The pod cannot start: a missing Secret/key, an unsupported volume, a securityContext ..."""


@dataclass
class Prepared:
    """A container ready to exec: argv is the whole sandboxed command line."""

    pod: str
    container: str
    namespace: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[int, int]  # container port -> local port
    named_ports: dict[str, int]  # port name -> container port
    readiness: dict[str, Any] | None
    security: sandbox.Security
    log_path: Path

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
    """Materialises pods of the real API server; one instance per Node."""

    def __init__(self, kube: Kube, root: Path, proxy_url: str | None = None) -> None:
        self.kube = kube
        self.root = root
        self.proxy_url = proxy_url
        self.bin_dir = Path(sys.executable).parent

    def prepare(self, pod: Mapping[str, Any], pod_ip: str, port_hint: Mapping[int, int] | None = None) -> PodPlan:
        """Materialise the pod's volumes once; resolve every container into a command line."""
        meta, spec = pod["metadata"], pod["spec"]
        pod_dir = self.root / "pods" / meta["namespace"] / meta["name"]
        if pod_dir.exists():
            shutil.rmtree(pod_dir)  # a new pod starts from fresh ephemeral volumes
        pod_dir.mkdir(parents=True)
        volumes = {v["name"]: self._volume(v, pod, pod_ip, pod_dir) for v in spec.get("volumes", [])}
        kinds = {v["name"]: next(iter(set(v) - {"name"}), "") for v in spec.get("volumes", [])}
        if not spec.get("containers"):
            raise PodError("pod spec has no containers")
        prepared = []
        for ctr in [*spec.get("initContainers", []), *spec["containers"]]:
            ports = {p["containerPort"]: (port_hint or {}).get(p["containerPort"]) or free_port()
                     for p in ctr.get("ports", [])}
            prepared.append(self._container(ctr, pod, pod_ip, volumes, kinds, ports))
        n_init = len(spec.get("initContainers", []))
        return PodPlan(meta["name"], meta["namespace"], pod_dir, prepared[:n_init], prepared[n_init:])

    def _container(self, ctr: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str,
                   volumes: Mapping[str, Path], kinds: Mapping[str, str], ports: dict[int, int]) -> Prepared:
        meta, spec = pod["metadata"], pod["spec"]
        try:
            security = sandbox.Security.of(spec, ctr)
        except sandbox.SecurityError as exc:
            raise PodError(str(exc)) from exc
        env = self._env(ctr, pod, pod_ip)
        argv = [expand_vars(a, env) for a in [*ctr.get("command", []), *ctr.get("args", [])]]
        if not argv:
            raise PodError(f"container {ctr['name']!r}: no command; image entrypoints are not known here")
        mounts = [self._mount(m, volumes, kinds) for m in ctr.get("volumeMounts", [])]
        host, port = self.kube.server.removeprefix("https://").rstrip("/").rsplit(":", 1)
        base = {
            "PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/",  # what a runtime sets for a uid the image's /etc/passwd does not know
            "LANG": "C.UTF-8",
            "HOSTNAME": meta["name"],
            "KUBERNETES_SERVICE_HOST": host,  # rule 3: the API server, not the Service's ClusterIP
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
        }
        if self.proxy_url:  # rule 5: Service DNS names resolve through the Service proxy
            proxy = {"HTTP_PROXY": self.proxy_url, "NO_PROXY": "127.0.0.1,localhost"}
            base.update(proxy | {k.lower(): v for k, v in proxy.items()})
        log_path = self.root / "logs" / f"{meta['namespace']}.{meta['name']}.{ctr['name']}.log"
        return Prepared(
            pod=meta["name"], container=ctr["name"], namespace=meta["namespace"],
            argv=sandbox.command(remap_ports(argv, ports), security, mounts, ctr.get("workingDir") or "/"),
            env={**base, **env}, ports=ports,
            named_ports={p["name"]: p["containerPort"] for p in ctr.get("ports", []) if p.get("name")},
            readiness=ctr.get("readinessProbe"), security=security, log_path=log_path,
        )

    @staticmethod
    def _mount(mount: Mapping[str, Any], volumes: Mapping[str, Path], kinds: Mapping[str, str]) -> sandbox.Mount:
        if mount["name"] not in volumes:
            raise PodError(f"volumeMount {mount['name']!r} names no volume")
        source = volumes[mount["name"]]
        if sub := mount.get("subPath"):
            source = source / sub
            if not source.exists():
                source.mkdir(parents=True)  # the kubelet creates a missing subPath directory
        read_only = bool(mount.get("readOnly")) or kinds[mount["name"]] in _API_VOLUMES
        return sandbox.Mount(mount["mountPath"], source, read_only)

    # -- API objects -------------------------------------------------------------

    def _read(self, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str]:
        """Decoded data of a Secret/ConfigMap (text only)."""
        obj = self.kube.get("v1/secrets" if kind == "Secret" else "v1/configmaps", namespace, name)
        if obj is None:
            if optional:
                return {}
            raise PodError(f"{kind} {namespace}/{name} not found")
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data = dict(obj.get("data") or {})
        data.update({k: base64.b64decode(v).decode() for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _token(self, pod: Mapping[str, Any], audience: str | None, expiration: int) -> str:
        """TokenRequest as the kubelet makes it: the pod's ServiceAccount, bound to the pod."""
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": [audience] if audience else [], "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}}}
        try:
            answer = self.kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token",
                                       body=body)
        except ApiError as exc:
            raise PodError(f"TokenRequest for ServiceAccount {meta['namespace']}/{sa}: {exc.code} {exc.reason}") from None
        return str(answer["status"]["token"])

    # -- env -------------------------------------------------------------------

    def _env(self, ctr: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in ctr.get("envFrom", []):
            prefix = source.get("prefix", "")
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if ref := source.get(key):
                    for k, v in self._read(kind, namespace, ref["name"], ref.get("optional", False)).items():
                        env[prefix + k] = v
        for item in ctr.get("env", []):
            if "valueFrom" in item:
                value = self._value_from(item["valueFrom"], pod, pod_ip)
                if value is not None:
                    env[item["name"]] = value
            else:
                env[item["name"]] = expand_vars(item.get("value", ""), env)
        return env

    def _value_from(self, value_from: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str) -> str | None:
        namespace = pod["metadata"]["namespace"]
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            if ref := value_from.get(key):
                data = self._read(kind, namespace, ref["name"], ref.get("optional", False))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise PodError(f"{kind} {namespace}/{ref['name']} has no key {ref['key']!r}")
                return data[ref["key"]]
        if ref := value_from.get("fieldRef"):
            return field(ref["fieldPath"], pod, pod_ip)
        raise PodError(f"unsupported valueFrom {sorted(value_from)}")

    # -- volumes -----------------------------------------------------------------

    def _volume(self, volume: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str, pod_dir: Path) -> Path:
        namespace = pod["metadata"]["namespace"]
        if "persistentVolumeClaim" in volume:
            path = self.root / "pvc" / namespace / volume["persistentVolumeClaim"]["claimName"]
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = pod_dir / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "emptyDir" in volume:
            return path
        if src := volume.get("secret"):
            _write_keys(path, self._read("Secret", namespace, src["secretName"], src.get("optional", False)), src)
        elif src := volume.get("configMap"):
            _write_keys(path, self._read("ConfigMap", namespace, src["name"], src.get("optional", False)), src)
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode", 0o644)
            for source in volume["projected"].get("sources") or []:
                self._project(path, source, pod, pod_ip, mode)
        elif "downwardAPI" in volume:
            self._project(path, {"downwardAPI": volume["downwardAPI"]}, pod, pod_ip, 0o644)
        else:
            raise PodError(f"volume {volume['name']!r}: unsupported type {sorted(set(volume) - {'name'})}")
        return path

    def _project(self, path: Path, source: Mapping[str, Any], pod: Mapping[str, Any], pod_ip: str, mode: int) -> None:
        namespace = pod["metadata"]["namespace"]
        if src := source.get("secret"):
            _write_keys(path, self._read("Secret", namespace, src["name"], src.get("optional", False)),
                        {"defaultMode": mode, **src})
        elif src := source.get("configMap"):
            _write_keys(path, self._read("ConfigMap", namespace, src["name"], src.get("optional", False)),
                        {"defaultMode": mode, **src})
        elif src := source.get("serviceAccountToken"):
            token = self._token(pod, src.get("audience"), int(src.get("expirationSeconds", 3600)))
            _write(path / src["path"], token, 0o600 if mode == 0o644 else mode)
        elif src := source.get("downwardAPI"):
            for item in src.get("items", []):
                _write(path / item["path"], field(item["fieldRef"]["fieldPath"], pod, pod_ip), item.get("mode", mode))
        else:
            raise PodError(f"unsupported projected source {sorted(source)}")


def field(path: str, pod: Mapping[str, Any], pod_ip: str) -> str:
    """A downward-API ``fieldPath`` of the pod."""
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "spec.nodeName": spec.get("nodeName", ""),
        "status.podIP": pod_ip,
        "status.hostIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodError(f"unsupported fieldRef {path!r}")


def _write_keys(path: Path, data: Mapping[str, str], src: Mapping[str, Any]) -> None:
    mode = int(src.get("defaultMode", 0o644))
    items = src.get("items")
    pairs = [(i["key"], i["path"], int(i.get("mode", mode))) for i in items] if items else [(k, k, mode) for k in data]
    for key, rel, item_mode in pairs:
        if key not in data:
            if src.get("optional"):
                continue
            raise PodError(f"key {key!r} not found for volume")
        _write(path / rel, data[key], item_mode)


def _write(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(mode)
