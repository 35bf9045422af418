"""The README's kubectl commands, with the real kubectl v1.35 against the real
kube-apiserver (tests.support.controlplane), as a user types them.

No operator runs here (tests/chart/test_helm_release.py runs one): where a command needs
what the operator writes (`kubectl wait --for=condition=Ready`, the READY/URL columns),
the test writes that status through the status subresource first, as the operator would.
Commands that need a container runtime (`logs`, `port-forward`) are not run.

The examples name their namespace (ml-team, ml-platform); each test renames it to a
fresh namespace so tests never share one. Nothing else in the files is changed.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import unique_namespace
from tests.support.controlplane import ControlPlane
from tests.support.crd import CR, install_crd
from tests.support.kubeapi import Kube
from tests.support.kubectl import Kubectl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MLFLOW = "mlflowserver.mlflow-operator.dev/mlflow"


@pytest.fixture
def kubectl(control_plane: ControlPlane, tmp_path: Path) -> Kubectl:
    return Kubectl(control_plane.kubeconfig, tmp_path)


@pytest.fixture
def crd(admin: Kube) -> None:
    install_crd(admin)


@pytest.fixture
def team(admin: Kube) -> Iterator[str]:
    """A fresh namespace name; the test creates it with kubectl, as the README does."""
    name = unique_namespace("ml-team")
    yield name
    admin.delete("v1/namespaces", None, name)


def example(name: str, namespace: str) -> str:
    text = (EXAMPLES / name).read_text()
    original = {d["metadata"]["namespace"] for d in yaml.safe_load_all(text) if d}
    assert len(original) == 1
    return text.replace(f"namespace: {original.pop()}", f"namespace: {namespace}")


def ready_status(namespace: str) -> dict:
    """What the operator writes once the server answers (status.compute's shape)."""
    now = "2026-01-01T00:00:00Z"
    return {"status": {
        "observedGeneration": 1, "phase": "Ready", "readyReplicas": 1,
        "url": f"http://mlflow.{namespace}.svc:5000", "audience": f"https://mlflow.{namespace}.svc",
        "adminSecret": "mlflow-admin",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available", "message": "1/1 ready",
             "lastTransitionTime": now, "observedGeneration": 1},
            {"type": "Progressing", "status": "False", "reason": "Complete", "message": "",
             "lastTransitionTime": now, "observedGeneration": 1},
            {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "",
             "lastTransitionTime": now, "observedGeneration": 1}]}}


def test_create_an_mlflow_server_as_the_readme_says(crd: None, kubectl: Kubectl, team: str) -> None:
    assert kubectl("create", "namespace", team).stdout.strip() == f"namespace/{team} created"
    minimal = example("minimal.yaml", team)
    assert kubectl("apply", "-f", "-", stdin=minimal).stdout.strip() == f"{MLFLOW} created"
    assert kubectl("apply", "-f", "-", stdin=minimal).stdout.strip() == f"{MLFLOW} unchanged"

    (row,) = kubectl.table("-n", team, "mlflow")
    assert list(row) == ["NAME", "READY", "REPLICAS", "AVAILABLE", "URL", "AGE"]
    assert (row["NAME"], row["READY"], row["REPLICAS"], row["URL"]) == ("mlflow", "", "1", "")

    # The operator's part: the status it writes once the server answers.
    kubectl("-n", team, "patch", "mlflow", "mlflow", "--subresource=status", "--type=merge",
            "-p", json.dumps(ready_status(team)))
    out = kubectl("-n", team, "wait", "mlflow/mlflow", "--for=condition=Ready", "--timeout=30s").stdout
    assert out.strip() == f"{MLFLOW} condition met"
    (row,) = kubectl.table("-n", team, "mlflow")
    assert row | {"AGE": ""} == {"NAME": "mlflow", "READY": "True", "REPLICAS": "1", "AVAILABLE": "1",
                                 "URL": f"http://mlflow.{team}.svc:5000", "AGE": ""}
    (wide,) = kubectl.table("-n", team, "mlflow", "mlflow", "-o", "wide")
    assert list(wide) == ["NAME", "READY", "REPLICAS", "AVAILABLE", "URL", "PHASE", "AUDIENCE", "AGE"]
    assert (wide["PHASE"], wide["AUDIENCE"]) == ("Ready", f"https://mlflow.{team}.svc")
    audience = kubectl("-n", team, "get", "mlflow", "mlflow", "-o", "jsonpath={.status.audience}").stdout
    assert audience == f"https://mlflow.{team}.svc"
    assert kubectl("get", "mlflow", "-A", "-o", "name").stdout.split().count(MLFLOW) >= 1

    described = " ".join(kubectl("-n", team, "describe", "mlflow", "mlflow").stdout.split())
    for line in ("Name: mlflow", f"Namespace: {team}", "Kind: MLflowServer", "Replicas: 1",
                 "Phase: Ready", f"URL: http://mlflow.{team}.svc:5000", "Events: <none>"):
        assert line in described, described


def test_explain_documents_the_spec(crd: None, kubectl: Kubectl) -> None:
    spec = kubectl("explain", "mlflowserver.spec").stdout
    assert "KIND:       MLflowServer" in spec and "VERSION:    v1alpha1" in spec
    assert "Desired state of the MLflow server." in spec
    for field in ("replicas\t<integer>", "auth\t<Object>", "backendStore\t<Object>",
                  "ingress\t<Object>", "storage\t<Object>", "server\t<Object>"):
        assert field in spec, field
    nested = kubectl("explain", "mlflowserver.spec.auth.permissionCacheTTLSeconds").stdout
    assert "FIELD: permissionCacheTTLSeconds <integer>" in nested
    assert "At most tokenCacheTTLSeconds." in " ".join(nested.split())
    short = kubectl("explain", "mlflow.status.url").stdout  # the short name works too
    assert "Tracking URI of the server" in short


def test_patch_is_judged_by_the_crd_rules(crd: None, kubectl: Kubectl, admin: Kube, team: str) -> None:
    kubectl("create", "namespace", team)
    kubectl("apply", "-f", "-", stdin=example("minimal.yaml", team))
    patch = {"spec": {"auth": {"allowedNamespaces": [team, "team-b"]}}}
    out = kubectl("-n", team, "patch", "mlflow", "mlflow", "--type=merge", "-p", json.dumps(patch)).stdout
    assert out.strip() == f"{MLFLOW} patched"
    assert admin.get(CR, team, "mlflow")["spec"]["auth"]["allowedNamespaces"] == [team, "team-b"]

    refused = kubectl("-n", team, "patch", "mlflow", "mlflow", "--type=merge",
                      "-p", '{"spec":{"replicas":2}}', check=False)
    assert refused.returncode == 1
    assert "replicas > 1 requires backendStore.uriSecretRef" in refused.stderr
    assert admin.get(CR, team, "mlflow")["spec"]["replicas"] == 1


def test_create_token_with_the_servers_audience(kubectl: Kubectl, admin: Kube, team: str) -> None:
    kubectl("create", "namespace", team)
    kubectl("-n", team, "create", "serviceaccount", "trainer")
    audience = f"https://mlflow.{team}.svc"
    token = kubectl("-n", team, "create", "token", "trainer", "--audience", audience).stdout.strip()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["aud"] == [audience]
    assert claims["sub"] == f"system:serviceaccount:{team}:trainer"
    review = admin.token_review(token, [audience])
    assert review["authenticated"] is True
    assert review["user"]["username"] == f"system:serviceaccount:{team}:trainer"


def test_production_and_training_job_examples_apply(crd: None, kubectl: Kubectl, admin: Kube,
                                                    team: str) -> None:
    kubectl("create", "namespace", team)
    out = kubectl("apply", "-f", "-", stdin=example("production.yaml", team)).stdout
    assert out.strip() == f"{MLFLOW} created"
    (wide,) = kubectl.table("-n", team, "mlflow", "mlflow", "-o", "wide")
    assert wide["REPLICAS"] == "3"
    out = kubectl("apply", "-f", "-", stdin=example("training-job.yaml", team)).stdout.split("\n")
    assert out[:2] == ["serviceaccount/trainer created", "job.batch/train-example created"]
    job = admin.get("batch/v1/jobs", team, "train-example")
    volume = job["spec"]["template"]["spec"]["volumes"][1]["projected"]["sources"][0]
    # The example's projected audience is the minimal server's; a copy in another
    # namespace would set its own (status.audience).
    assert volume["serviceAccountToken"]["audience"] == "https://mlflow.ml-team.svc"


def test_crd_update_command_of_the_notes(crd: None, kubectl: Kubectl) -> None:
    crd_file = ROOT / "charts" / "mlflow-operator" / "crds" / "mlflowservers.yaml"
    out = kubectl("apply", "--server-side", "-f", str(crd_file)).stdout
    assert out.strip() == "customresourcedefinition.apiextensions.k8s.io/mlflowservers.mlflow-operator.dev " \
                          "serverside-applied"
