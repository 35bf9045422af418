"""A small RBAC authorizer over the chart's rendered Roles and bindings.

It answers the question kube-apiserver's RBAC authorizer answers for the operator's
ServiceAccount: is (verb, group, resource[/subresource], namespace, name) allowed by the
rules bound to it? Enough of the semantics for our rules: apiGroups/resources/verbs with
"*", resourceNames (which never match list/watch/create of a collection), ClusterRoles
bound cluster-wide, Roles bound in their namespace.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Resources whose objects live outside namespaces (the rest of the operator's are namespaced).
CLUSTER_SCOPED = {"clusterrolebindings", "clusterroles", "namespaces", "customresourcedefinitions"}


@dataclass(frozen=True)
class Call:
    verb: str
    group: str
    resource: str  # plural, or plural/subresource
    namespace: str | None = None  # None: cluster-wide (list/watch across namespaces too)
    name: str | None = None


@dataclass(frozen=True)
class Grant:
    namespace: str | None  # None: granted in every namespace and cluster-wide
    rule: Mapping[str, Any]


def _subject_matches(subject: Mapping[str, Any], namespace: str, name: str) -> bool:
    return (subject.get("kind") == "ServiceAccount" and subject.get("name") == name
            and subject.get("namespace") == namespace)


def grants_for(objects: Iterable[Mapping[str, Any]], sa_namespace: str, sa_name: str) -> list[Grant]:
    """Every rule bound to the ServiceAccount, with the namespace it applies in."""
    objects = list(objects)
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objects if o.get("kind") in ("ClusterRole", "Role")}
    out: list[Grant] = []
    for binding in objects:
        if binding.get("kind") not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(_subject_matches(s, sa_namespace, sa_name) for s in binding.get("subjects") or []):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role_ns = scope if ref["kind"] == "Role" else None
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref}"
        out += [Grant(scope, rule) for rule in role.get("rules") or []]
    return out


def _has(values: Iterable[str], value: str) -> bool:
    values = list(values)
    return "*" in values or value in values


def _rule_allows(rule: Mapping[str, Any], call: Call) -> bool:
    if not (_has(rule.get("apiGroups", []), call.group) and _has(rule.get("resources", []), call.resource)
            and _has(rule.get("verbs", []), call.verb)):
        return False
    names = rule.get("resourceNames") or []
    return not names or (call.name is not None and call.name in names)


def allows(grants: Iterable[Grant], call: Call) -> bool:
    for grant in grants:
        if grant.namespace is not None and grant.namespace != call.namespace:
            continue  # a Role allows nothing outside its namespace, nor cluster-wide
        if _rule_allows(grant.rule, call):
            return True
    return False


def expand(rules: Iterable[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """{(verb, group, resource)} of explicit rules (the chart never uses '*')."""
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    out.add((verb, group, resource))
    return out
