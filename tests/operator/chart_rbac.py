"""The operator's identity in the tests: the chart's own ServiceAccount and RBAC.

`helm template` renders the chart with the values of the test (`watchNamespaces`, or
cluster-wide); its ServiceAccount, (Cluster)Roles and (Cluster)RoleBindings are applied to
the real API server, and the operator gets a kubeconfig with a TokenRequest token of that
ServiceAccount. So the real RBAC authorizer judges every call the operator makes.

    identity = OperatorIdentity.install(admin, workdir, release="op-a1b2", watch=["team-a"])
    identity.kubeconfig(server=proxy.url)      # for `mlflow-operator run`
    identity.uninstall(admin)                  # the cluster-scoped objects it made

Each test module uses its own release name, so ClusterRoles of one mode never leak into
the next module's test of another mode.
"""
from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import API_AUDIENCE
from tests.support.kubeapi import Kube

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlflow-operator"
HELM = ROOT / ".cache" / "bin" / "helm"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
_RESOURCES = {"ServiceAccount": "v1/serviceaccounts",
              "ClusterRole": "rbac.authorization.k8s.io/v1/clusterroles",
              "ClusterRoleBinding": "rbac.authorization.k8s.io/v1/clusterrolebindings",
              "Role": "rbac.authorization.k8s.io/v1/roles",
              "RoleBinding": "rbac.authorization.k8s.io/v1/rolebindings"}
# Kopf matches `--namespace` patterns by listing namespaces; the chart renders exact
# names only, so a pattern user adds this rule (test_handlers_globs.py).
NAMESPACE_WATCH_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}


def render(release: str, namespace: str, watch: list[str], webhook: bool = False) -> list[dict[str, Any]]:
    """The chart's RBAC objects (and ServiceAccount) as `helm template` renders them.
    The injection webhook's rules only with `webhook` (tests/operator/test_webhook*.py run
    the operator with the webhook on; the other tests run it without)."""
    values = ["--set-json", f"watchNamespaces={json.dumps(watch)}",
              "--set-json", f"webhook.enabled={json.dumps(webhook)}"]
    out = subprocess.run([str(HELM), "template", release, str(CHART), "--namespace", namespace, *values],
                         capture_output=True, text=True, timeout=60, check=True,
                         env={"HELM_CACHE_HOME": "/tmp/helm-test/cache", "HELM_CONFIG_HOME": "/tmp/helm-test/config",
                              "HELM_DATA_HOME": "/tmp/helm-test/data", "PATH": "/usr/bin:/bin"}).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc and doc.get("kind") in RBAC_KINDS]


@dataclass(frozen=True)
class RuleRef:
    """One rule of a rendered (Cluster)Role: which object, which index, what it grants."""
    kind: str
    index: int
    rule: dict[str, Any]

    @property
    def label(self) -> str:
        resources = "+".join(self.rule.get("resources") or [])
        return f"{self.kind}:{resources}:{'/'.join(self.rule.get('verbs') or [])}"


def rules(objects: list[dict[str, Any]]) -> list[RuleRef]:
    """Every rule of the rendered roles; a Role repeated per namespace is listed once."""
    found: dict[tuple[str, int], RuleRef] = {}
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            for i, rule in enumerate(obj.get("rules") or []):
                found.setdefault((obj["kind"], i), RuleRef(obj["kind"], i, rule))
    return list(found.values())


def without(objects: list[dict[str, Any]], dropped: RuleRef) -> list[dict[str, Any]]:
    """The same objects with one rule removed (from every Role of that kind)."""
    out = copy.deepcopy(objects)
    for obj in out:
        if obj["kind"] == dropped.kind:
            del obj["rules"][dropped.index]
    return out


@dataclass
class OperatorIdentity:
    release: str
    namespace: str
    objects: list[dict[str, Any]]
    token: str = ""
    workdir: Path = field(default_factory=Path)

    @property
    def service_account(self) -> str:
        return next(o["metadata"]["name"] for o in self.objects if o["kind"] == "ServiceAccount")

    @classmethod
    def install(cls, admin: Kube, workdir: Path, release: str, watch: list[str],
                change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
                webhook: bool = False) -> OperatorIdentity:
        """Apply the chart's RBAC for `watch` ([] = cluster-wide) in a release namespace of
        its own (named after the release), optionally changed first, and get a token."""
        objects = render(release, release, watch, webhook)
        if change is not None:
            objects = change(objects)
        admin.create_namespace(release)
        for namespace in watch:
            admin.create_namespace(namespace)
        for obj in objects:
            admin.apply(obj, manager="tests-chart-rbac")
        identity = cls(release, release, objects, workdir=workdir)
        identity.token = admin.token_for(release, identity.service_account, [API_AUDIENCE], 3 * 3600)
        return identity

    def kubeconfig(self, admin: Kube, server: str) -> Path:
        """A kubeconfig with the ServiceAccount's token, pointed at `server` (the proxy)."""
        return admin.write_kubeconfig(self.workdir / f"{self.release}.kubeconfig", token=self.token,
                                      server=server, namespace=self.namespace)

    def uninstall(self, admin: Kube) -> None:
        for obj in self.objects:
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                admin.delete(_RESOURCES[obj["kind"]], None, obj["metadata"]["name"])
        admin.delete("v1/namespaces", None, self.namespace)


def with_extra_cluster_rule(rule: dict[str, Any]) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    def change(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = copy.deepcopy(objects)
        next(o for o in out if o["kind"] == "ClusterRole")["rules"].append(rule)
        return out
    return change
