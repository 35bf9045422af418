"""Service, Ingress, PodDisruptionBudget and NetworkPolicy."""

from __future__ import annotations

from typing import Any

from mlflow_operator import names
from mlflow_operator.model import MLflowServerSpec, ServerRef
from mlflow_operator.render.common import Manifest, metadata

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def render_service(ref: ServerRef, spec: MLflowServerSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            ref, names.service_name(ref), "server",
            annotations=spec.service.annotations or None,
        ),
        "spec": {
            "type": spec.service.type,
            "selector": names.selector_labels(ref),
            "ports": [
                {
                    "name": "http",
                    "port": spec.service.port,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def render_ingress(ref: ServerRef, spec: MLflowServerSpec) -> Manifest | None:
    ingress = spec.ingress
    if not ingress.enabled:
        return None
    body: dict[str, Any] = {
        "rules": [
            {
                "host": ingress.host,
                "http": {
                    "paths": [
                        {
                            "path": ingress.path,
                            "pathType": "Prefix",
                            "backend": {
                                "service": {
                                    "name": names.service_name(ref),
                                    "port": {"name": "http"},
                                }
                            },
                        }
                    ]
                },
            }
        ]
    }
    if ingress.class_name:
        body["ingressClassName"] = ingress.class_name
    if ingress.tls:
        body["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls.secret_name}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(
            ref, names.ingress_name(ref), "server", annotations=ingress.annotations or None
        ),
        "spec": body,
    }


def render_pdb(ref: ServerRef, spec: MLflowServerSpec) -> Manifest | None:
    """Only with several replicas: with one, a PDB would block node drains forever."""
    if spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(ref, names.pdb_name(ref), "server"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(ref)},
        },
    }


def _peers(ref: ServerRef, spec: MLflowServerSpec) -> list[dict[str, Any]]:
    if spec.network_policy.from_:
        return [dict(peer) for peer in spec.network_policy.from_]
    allowed = names.allowed_namespaces(spec, ref)
    if "*" in allowed:
        return [{"namespaceSelector": {}}]
    if not allowed:
        return []
    return [
        {
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(allowed)}
                ]
            }
        }
    ]


def render_network_policy(ref: ServerRef, spec: MLflowServerSpec) -> Manifest | None:
    """Ingress to port 5000 only; egress stays open (databases, object storage, API server)."""
    if not spec.network_policy.enabled:
        return None
    peers = _peers(ref, spec)
    # A rule without `from` admits everyone: with no peers there is no rule (deny all).
    rules = [{"from": peers, "ports": [{"protocol": "TCP", "port": names.SERVER_PORT}]}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ref, names.network_policy_name(ref), "server"),
        "spec": {
            "podSelector": {"matchLabels": names.selector_labels(ref)},
            "policyTypes": ["Ingress"],
            "ingress": rules if peers else [],
        },
    }
