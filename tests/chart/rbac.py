"""The chart's RBAC installed on the real API server and judged by its RBAC authorizer.

    rbac = ChartRbac.install(admin, tmp_path, watch=["team-a"])   # [] = every namespace
    rbac.allowed("create", "apps", "deployments", namespace="team-a")  # SubjectAccessReview
    rbac.as_operator()            # a Kube acting with a TokenRequest token of the chart's SA
    rbac.uninstall()

`helm template` renders the chart with a release name of its own (the chart names its
ClusterRole(Binding) after the release), its ServiceAccount and (Cluster)Roles and
bindings are server-side applied, and every question is a SubjectAccessReview for that
ServiceAccount: the answer is kube-apiserver's, not ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.chart import helm as h
from tests.conftest import unique_namespace
from tests.support.controlplane import API_AUDIENCE
from tests.support.kubeapi import Kube, resource_of

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@dataclass
class ChartRbac:
    admin: Kube
    release: str  # also the release namespace and the ServiceAccount's name
    watch: list[str]
    objects: list[dict[str, Any]]

    @classmethod
    def install(cls, admin: Kube, tmp_path: Path, watch: list[str]) -> ChartRbac:
        release = unique_namespace("mlflow-operator")
        values = {"watchNamespaces": watch} if watch else None
        objects = [o for o in h.template(tmp_path, values, namespace=release, release=release)
                   if o["kind"] in RBAC_KINDS]
        for namespace in (release, *watch):
            admin.create_namespace(namespace)
        for obj in objects:
            admin.apply(obj, manager="tests-chart-rbac")
        return cls(admin, release, watch, objects)

    def uninstall(self) -> None:
        for obj in self.objects:
            if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                self.admin.delete(resource_of(obj), None, obj["metadata"]["name"])
        for namespace in (self.release, *self.watch):
            self.admin.delete("v1/namespaces", None, namespace)

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.release}:{self.release}"

    def allowed(self, verb: str, group: str, resource: str, namespace: str | None = None,
                name: str | None = None) -> bool:
        """Would kube-apiserver let the operator's ServiceAccount do this? `resource` may be
        `plural/subresource`; namespace None = cluster-scoped or across all namespaces."""
        plural, _, subresource = resource.partition("/")
        attributes = {"verb": verb, "group": group, "resource": plural, "subresource": subresource,
                      "namespace": namespace or "", "name": name or ""}
        review = self.admin.create("authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": self.user, "resourceAttributes": attributes,
                     # The groups a ServiceAccount token authenticates with.
                     "groups": ["system:serviceaccounts", f"system:serviceaccounts:{self.release}",
                                "system:authenticated"]}})
        return bool(review["status"].get("allowed"))

    def as_operator(self) -> Kube:
        """The API as the operator sees it: a TokenRequest token of the chart's SA."""
        return self.admin.with_token(self.admin.token_for(self.release, self.release, [API_AUDIENCE]))
