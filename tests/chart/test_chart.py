"""The Helm chart with the real helm v4 binary: lint, render, Kubernetes 1.35 schemas
(kubernetes-validate, and the real kube-apiserver by server-side dry-run), Pod Security
`restricted`, values schema errors, and what a platform engineer relies on in the
rendered objects. Installing, upgrading and uninstalling: test_helm_release.py."""
from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mlflow_operator import cli
from mlflow_operator.model import DEFAULT_IMAGE
from mlflow_operator.settings import Options
from tests.chart import helm as h
from tests.conftest import unique_namespace
from tests.support.controlplane import ControlPlane
from tests.support.crd import install_crd
from tests.support.kubeapi import Kube, resource_path
from tests.support.kubectl import Kubectl

K8S_VERSION = "1.35"  # kubernetes-validate ships 1.35 schemas (strict: unknown fields fail)
PYPROJECT = tomllib.loads((h.ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
DIGEST = "sha256:" + "ab" * 32
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                   "app.kubernetes.io/component", "app.kubernetes.io/part-of", "helm.sh/chart")

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "custom-image": {"image": {"registry": "registry.example.com:5000", "repository": "ml/op",
                               "tag": "1.2.3-rc1", "digest": DIGEST, "pullPolicy": "Always"},
                     "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}]},
    "mirror": {"serverImage": {"registry": "registry.internal:5000", "repository": "mirror/mlflow-server",
                               "tag": "0.1.0-airgap", "digest": DIGEST}},
    "labels": {"commonLabels": {"team": "ml-platform", "example.com/cost-center": "42"},
               "podLabels": {"sidecar.istio.io/inject": "false"},
               "podAnnotations": {"prometheus.io/scrape": "false"}},
    "scheduling": {"nodeSelector": {"kubernetes.io/os": "linux"},
                   "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                                    "effect": "NoSchedule"}],
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                       "nodeSelectorTerms": [{"matchExpressions": [
                           {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
                   "priorityClassName": "system-cluster-critical"},
    "existing-sa-and-env": {"serviceAccount": {"create": False, "name": "ops-sa"},
                            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                                         {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                            "logFormat": "plain", "verbose": True, "resyncSeconds": 30,
                            "fullnameOverride": "mlflow-op"},
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("values")
    return {name: h.template(tmp, values) for name, values in VALUE_SETS.items()}


def _deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return h.one(objects, "Deployment")


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _deployment(objects)["spec"]["template"]["spec"]["containers"]
    return container


# ---- lint and schemas ------------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(name: str, tmp_path: Path) -> None:
    out = h.helm("lint", "--strict", str(h.CHART), *h.values_args(VALUE_SETS[name], tmp_path)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_validates_against_kubernetes_schemas(name: str, rendered: dict) -> None:
    objects = rendered[name]
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            version = kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {K8S_VERSION} at "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        assert version == K8S_VERSION, where


# ---- the real API server: server-side dry-run, Pod Security ----------------------------

@pytest.fixture(scope="module")
def cluster_namespaces(admin: Kube) -> Iterator[dict[str, str]]:
    """Fresh namespaces standing in for the release namespace and team-a/team-b; the
    release namespace enforces Pod Security `restricted`, as a hardened cluster would."""
    names = {h.NAMESPACE: unique_namespace("chart"), "team-a": unique_namespace("team-a"),
             "team-b": unique_namespace("team-b")}
    install_crd(admin)
    for original, name in names.items():
        labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
        admin.create_namespace(name, labels if original == h.NAMESPACE else None)
    for account in (h.RELEASE, "ops-sa"):  # the pods' ServiceAccounts must exist (admission)
        admin.create_service_account(names[h.NAMESPACE], account)
    yield names
    for name in names.values():
        admin.delete("v1/namespaces", None, name)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_api_server_accepts_every_rendered_object(
        name: str, cluster_namespaces: dict[str, str], control_plane: ControlPlane, tmp_path: Path) -> None:
    values = copy.deepcopy(VALUE_SETS[name])
    if "watchNamespaces" in values:
        values["watchNamespaces"] = [cluster_namespaces[ns] for ns in values["watchNamespaces"]]
    objects = h.template(tmp_path, values, namespace=cluster_namespaces[h.NAMESPACE])
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    out = Kubectl(control_plane.kubeconfig, tmp_path)(
        "apply", "--server-side", "--dry-run=server", "--field-manager=chart-test", "-f", str(manifest))
    assert len(out.stdout.splitlines()) == len(objects), out.stdout
    assert all(line.endswith("serverside-applied (server dry run)") for line in out.stdout.splitlines())
    assert "Warning" not in out.stderr, out.stderr  # e.g. Pod Security warnings on the Deployment


def _dry_run_pod(admin: Kube, namespace: str, pod_spec: dict[str, Any]) -> tuple[int, str]:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa-check"}, "spec": pod_spec}
    response = admin.session.post(admin.server + resource_path("v1/pods", namespace), json=body,
                                  params={"dryRun": "All"}, timeout=30)
    return response.status_code, response.json().get("message", "")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_operator_pod_passes_pod_security_restricted(
        name: str, rendered: dict, cluster_namespaces: dict[str, str], admin: Kube) -> None:
    pod_spec = _deployment(rendered[name])["spec"]["template"]["spec"]
    namespace = cluster_namespaces[h.NAMESPACE]
    assert _dry_run_pod(admin, namespace, pod_spec) == (201, "")
    # The namespace really enforces it: the same pod without its hardening is refused.
    weakened = {**pod_spec, "securityContext": {}}
    code, message = _dry_run_pod(admin, namespace, weakened)
    assert code == 403 and 'violates PodSecurity "restricted:latest"' in message, message


def test_object_set_per_mode(rendered: dict) -> None:
    kinds = sorted((o["kind"], o["metadata"].get("namespace")) for o in rendered["defaults"])
    # The injection webhook (webhook.enabled, the default) adds its Service, Secret,
    # MutatingWebhookConfiguration and a Role/ClusterRole pair of its own (tests/operator/test_webhook*.py).
    webhook = [("Service", h.NAMESPACE), ("Secret", h.NAMESPACE), ("MutatingWebhookConfiguration", None),
               ("Role", h.NAMESPACE), ("RoleBinding", h.NAMESPACE), ("ClusterRole", None), ("ClusterRoleBinding", None)]
    # MLflow workspaces (templates/mlflow-roles.yaml): mlflow-operator:workspace-server and
    # mlflow-operator:view|edit|admin.
    workspaces = [("ClusterRole", None)] * 4
    assert kinds == sorted([("CustomResourceDefinition", None), ("ServiceAccount", h.NAMESPACE),
                            ("ClusterRole", None), ("ClusterRoleBinding", None),
                            ("Deployment", h.NAMESPACE), *webhook, *workspaces])
    namespaced = [o for o in rendered["namespaced"] if not o["metadata"]["name"].endswith("-webhook")]
    assert sorted(o["metadata"]["namespace"] for o in h.by_kind(namespaced, "Role")) == ["team-a", "team-b"]
    assert sorted(o["metadata"]["namespace"] for o in h.by_kind(namespaced, "RoleBinding")) == ["team-a", "team-b"]
    assert not h.by_kind(rendered["existing-sa-and-env"], "ServiceAccount")


# ---- the CRD and versions ----------------------------------------------------------------

def test_chart_crd_is_the_repository_crd() -> None:
    chart_crds = sorted(p.name for p in (h.CHART / "crds").iterdir())
    assert chart_crds == ["mlflowservers.yaml"]
    assert (h.CHART / "crds" / "mlflowservers.yaml").read_bytes() == \
        (h.ROOT / "crds" / "mlflowservers.yaml").read_bytes(), \
        "copy crds/mlflowservers.yaml to charts/mlflow-operator/crds/"


def test_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((h.CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == VERSION
    # The operator's default server image is the plugin image of the same release.
    assert DEFAULT_IMAGE.endswith(f":{VERSION}")


# ---- the operator Deployment ------------------------------------------------------------

def test_deployment_is_one_hardened_replica(rendered: dict) -> None:
    deployment = _deployment(rendered["defaults"])
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == h.RELEASE
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # operator/Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container(rendered["defaults"])
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert "command" not in container  # the image's ENTRYPOINT is mlflow-operator


def _options(container: dict[str, Any]) -> tuple[Options, Any]:
    """The container's args as the operator's own CLI parses them."""
    args = cli.build_parser().parse_args(container["args"])
    assert args.func.__name__ == "_run"
    return args


@pytest.mark.parametrize("name", VALUE_SETS)
def test_args_are_accepted_by_the_operator_cli(name: str, rendered: dict) -> None:
    args = _options(_container(rendered[name]))
    assert args.standalone is True
    namespaces = VALUE_SETS[name].get("watchNamespaces", [])
    assert (args.namespace or []) == namespaces
    assert args.all_namespaces is (not namespaces)


def test_liveness_probe_targets_the_operators_endpoint(rendered: dict) -> None:
    for objects in rendered.values():
        container = _container(objects)
        args = _options(container)
        probe = container["livenessProbe"]["httpGet"]
        port = next(p for p in container["ports"] if p["name"] == probe["port"])
        assert args.liveness == f"http://0.0.0.0:{port['containerPort']}{probe['path']}"


def test_log_format_verbose_resync_and_env(rendered: dict) -> None:
    args = _options(_container(rendered["defaults"]))
    assert (args.log_format, args.verbose, args.resync_seconds) == ("json", False, 60.0)
    container = _container(rendered["existing-sa-and-env"])
    args = _options(container)
    assert (args.log_format, args.verbose, args.resync_seconds) == ("plain", True, 30.0)
    assert container["env"] == VALUE_SETS["existing-sa-and-env"]["extraEnv"]
    assert _deployment(rendered["existing-sa-and-env"])["spec"]["template"]["spec"][
        "serviceAccountName"] == "ops-sa"


def test_image_reference(rendered: dict) -> None:
    assert _container(rendered["defaults"])["image"] == f"ghcr.io/mlflow-operator/mlflow-operator:{VERSION}"
    container = _container(rendered["custom-image"])
    assert container["image"] == f"registry.example.com:5000/ml/op:1.2.3-rc1@{DIGEST}"
    assert container["imagePullPolicy"] == "Always"
    pod = _deployment(rendered["custom-image"])["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]


def test_default_server_image(rendered: dict) -> None:
    # Out of the box the operator's default is what plugin/Dockerfile builds for this release.
    assert _options(_container(rendered["defaults"])).default_server_image == DEFAULT_IMAGE
    assert _options(_container(rendered["mirror"])).default_server_image == \
        f"registry.internal:5000/mirror/mlflow-server:0.1.0-airgap@{DIGEST}"
    # The operator's own image is a separate value.
    assert _container(rendered["mirror"])["image"] == _container(rendered["defaults"])["image"]


def test_scheduling_values_reach_the_pod(rendered: dict) -> None:
    pod = _deployment(rendered["scheduling"])["spec"]["template"]["spec"]
    values = VALUE_SETS["scheduling"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == values[key], key


def test_standard_and_extra_labels_on_every_object(rendered: dict) -> None:
    for name, objects in rendered.items():
        for obj in objects:
            if obj["kind"] == "CustomResourceDefinition":
                continue  # installed verbatim from crds/
            labels = obj["metadata"]["labels"]
            assert all(k in labels for k in STANDARD_LABELS), (name, obj["kind"], labels)
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["app.kubernetes.io/version"] == VERSION
            for key, value in VALUE_SETS[name].get("commonLabels", {}).items():
                assert labels[key] == value
    template = _deployment(rendered["labels"])["spec"]["template"]["metadata"]
    assert template["labels"]["sidecar.istio.io/inject"] == "false"
    assert template["labels"]["team"] == "ml-platform"
    assert template["annotations"] == {"prometheus.io/scrape": "false"}
    # The selector is the stable subset only (selectors are immutable on upgrade).
    selector = _deployment(rendered["labels"])["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "mlflow-operator",
                        "app.kubernetes.io/instance": h.RELEASE}


def test_notes_tell_how_to_create_the_first_server(tmp_path: Path) -> None:
    out = h.helm("install", "--dry-run=client", h.RELEASE, str(h.CHART), "-n", h.NAMESPACE).stdout
    notes = out[out.index("NOTES:"):]
    assert "kind: MLflowServer" in notes
    assert "kubectl -n ml-team wait mlflow/mlflow --for=condition=Ready" in notes
    assert "MLFLOW_TRACKING_AUTH=k8s-token" in notes
    out = h.helm("install", "--dry-run=client", h.RELEASE, str(h.CHART), "-n", h.NAMESPACE,
                 *h.values_args({"watchNamespaces": ["team-a"]}, tmp_path)).stdout
    assert "only: team-a" in out and "kubectl apply -n team-a" in out


# ---- bad values -------------------------------------------------------------------------

BAD_VALUES = [
    ({"image": {"pullPolicy": "Sometimes"}},
     "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    ({"image": {"digest": "sha256:xyz"}}, "at '/image/digest': 'sha256:xyz' does not match pattern"),
    ({"image": {"repository": "Bad Repo"}}, "at '/image/repository'"),
    ({"image": {"tag": "v1:2"}}, "at '/image/tag'"),
    ({"serverImage": {"repository": ""}}, "at '/serverImage/repository'"),
    ({"serverImage": {"tag": "a b"}}, "at '/serverImage/tag'"),
    ({"serverImage": {"pullPolicy": "Always"}}, "additional properties 'pullPolicy' not allowed"),
    ({"imagePullSecrets": ["regcred"]}, "at '/imagePullSecrets/0': got string, want object"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0': 'Team_A' does not match pattern"),
    ({"watchNamespaces": ["a", "a"]}, "at '/watchNamespaces': items at 0 and 1 are equal"),
    ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
    ({"logFormat": "xml"}, "at '/logFormat': value must be one of 'json', 'plain', 'full'"),
    ({"resyncSeconds": 0}, "at '/resyncSeconds'"),
    ({"liveness": {"port": 70000}}, "at '/liveness/port': maximum: got 70,000, want 65,535"),
    ({"replicas": 2}, "at '': additional properties 'replicas' not allowed"),
    ({"imag": {"tag": "x"}}, "additional properties 'imag' not allowed"),
    ({"securityContext": {"readOnlyRootFilesystem": False}},
     "at '/securityContext/readOnlyRootFilesystem': value must be true"),
    ({"securityContext": {"allowPrivilegeEscalation": True}},
     "at '/securityContext/allowPrivilegeEscalation': value must be false"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "at '/podSecurityContext/runAsNonRoot': value must be true"),
    ({"podSecurityContext": {"runAsUser": 0}}, "at '/podSecurityContext/runAsUser': minimum: got 0, want 1"),
    ({"extraEnv": [{"value": "x"}]}, "at '/extraEnv/0': missing property 'name'"),
    ({"commonLabels": {"team": 5}}, "at '/commonLabels/team': got number, want string"),
    ({"rbac": {"create": "yes"}}, "at '/rbac/create': got string, want boolean"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(values: dict, message: str, tmp_path: Path) -> None:
    error = h.template_error(tmp_path, values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error, error
    assert "panic" not in error and "goroutine" not in error


def test_missing_service_account_name_is_explained(tmp_path: Path) -> None:
    error = h.template_error(tmp_path, {"serviceAccount": {"create": False}})
    assert "serviceAccount.name is required when serviceAccount.create is false" in error
