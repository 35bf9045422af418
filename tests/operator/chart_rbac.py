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


def _service_account(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "ServiceAccount")


def operator_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (Cluster)Roles the operator's own ServiceAccount is bound to, by the name in
    the bindings' roleRef. The chart renders other ClusterRoles too (the servers'
    `mlflow-operator:workspace-server`, the aggregated view/edit/admin): the operator
    holds none of them, so they are no part of its identity."""
    account = _service_account(objects)["metadata"]
    bound: set[tuple[str, str]] = set()
    for obj in objects:
        if obj["kind"] in ("ClusterRoleBinding", "RoleBinding") and any(
                s.get("kind") == "ServiceAccount" and s.get("name") == account["name"]
                and s.get("namespace") == account.get("namespace") for s in obj.get("subjects") or []):
            bound.add((obj["roleRef"]["kind"], obj["roleRef"]["name"]))
    return [o for o in objects if (o["kind"], o["metadata"]["name"]) in bound]


@dataclass(frozen=True)
class RuleRef:
    """One rule of the operator's own roles: the role's kind and what it grants. The rule
    is found again by its content, so a chart that reorders its rules or renders more
    roles does not change what a case drops."""
    kind: str
    rule: dict[str, Any]

    @property
    def label(self) -> str:
        resources = "+".join(self.rule.get("resources") or [])
        return f"{self.kind}:{resources}:{'/'.join(self.rule.get('verbs') or [])}"


def rules(objects: list[dict[str, Any]]) -> list[RuleRef]:
    """Every rule of the operator's own roles; a Role repeated per namespace is listed once."""
    found: list[RuleRef] = []
    for obj in operator_roles(objects):
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj.get("rules") or []:
                ref = RuleRef(obj["kind"], rule)
                if ref not in found:
                    found.append(ref)
    return found


def without(objects: list[dict[str, Any]], dropped: RuleRef) -> list[dict[str, Any]]:
    """The same objects with one rule removed from each of the operator's roles of that
    kind (a Role repeated per namespace loses it in every namespace)."""
    out = copy.deepcopy(objects)
    removed = 0
    for obj in operator_roles(out):
        if obj["kind"] == dropped.kind and dropped.rule in (obj.get("rules") or []):
            obj["rules"].remove(dropped.rule)
            removed += 1
    if not removed:
        raise AssertionError(f"no role of the operator grants {dropped.label}")
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
        return str(_service_account(self.objects)["metadata"]["name"])

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
        next(o for o in operator_roles(out) if o["kind"] == "ClusterRole")["rules"].append(rule)
        return out
    return change
