"""helm v4 against the real kube-apiserver v1.35, with OpenAPI validation on: the
README's `helm install --create-namespace`, then `helm upgrade` and `helm uninstall`;
and the operator run as a local process with the installed Deployment's args and a
TokenRequest token of the chart's ServiceAccount, reconciling one MLflowServer.

There is no container runtime: tests.support.node.Node binds the chart's pod (and the
operator's server and migration pods) and reports them running, so `kubectl rollout
status`, Deployment availability and Job completion come from the real controllers.

Each test installs its own release into its own namespace; the release name is unique
too, because the chart names its ClusterRole(Binding) after the release.
"""
from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_operator import cli
from tests.chart import helm as h
from tests.conftest import unique_namespace
from tests.support.controlplane import API_AUDIENCE, ControlPlane, free_port
from tests.support.crd import CR, CRD_NAME, install_crd
from tests.support.kubeapi import Kube
from tests.support.kubectl import Kubectl
from tests.support.node import Node
from tests.support.waiting import wait_for

OPERATOR = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mlflow-operator"
RBAC = "rbac.authorization.k8s.io/v1"


class Release:
    """One chart release: its name is also its namespace and the ServiceAccount's name."""

    def __init__(self, plane: ControlPlane, admin: Kube, tmp_path: Path):
        self.name = unique_namespace("mlflow-operator")
        self.plane, self.admin, self.tmp_path = plane, admin, tmp_path

    def helm(self, verb: str, *args: str, values: dict[str, Any] | None = None) -> str:
        chart = [str(h.CHART)] if verb in ("install", "upgrade") else []
        return h.helm(verb, self.name, *chart, "-n", self.name, *args,
                      *h.values_args(values, self.tmp_path), kubeconfig=self.plane.kubeconfig).stdout

    def get(self, resource: str, name: str | None = None, namespace: str | None = "") -> Any:
        return self.admin.get(resource, self.name if namespace == "" else namespace, name or self.name)

    def container(self) -> dict[str, Any]:
        (container,) = self.get("apps/v1/deployments")["spec"]["template"]["spec"]["containers"]
        return container


@pytest.fixture
def release(control_plane: ControlPlane, admin: Kube, tmp_path: Path) -> Iterator[Release]:
    install_crd(admin)  # helm skips a CRD that exists; the session may have installed it
    rel = Release(control_plane, admin, tmp_path)
    yield rel
    h.helm("uninstall", rel.name, "-n", rel.name, "--ignore-not-found",
           kubeconfig=control_plane.kubeconfig, check=False)
    admin.delete("v1/namespaces", None, rel.name)


@pytest.fixture
def teams(admin: Kube) -> Iterator[list[str]]:
    names = [unique_namespace("team-a"), unique_namespace("team-b")]
    for name in names:
        admin.create_namespace(name)
    yield names
    for name in names:
        admin.delete("v1/namespaces", None, name)


@pytest.fixture(scope="module")
def module_node(admin: Kube) -> Iterator[Node]:
    # One per module: stopping a Node waits for its watch threads (seconds each).
    node = Node(admin, unique_namespace("node-helm"), namespaces=set()).start()
    yield node
    node.stop()


@pytest.fixture
def node(module_node: Node, release: Release, teams: list[str]) -> Node:
    for namespace in (release.name, *teams):
        module_node.add_namespace(namespace)
    return module_node


def _rule_resources(role: dict[str, Any]) -> set[str]:
    return {r for rule in role["rules"] for r in rule["resources"]}


def test_install_upgrade_uninstall(release: Release, teams: list[str], node: Node, admin: Kube,
                                   control_plane: ControlPlane) -> None:
    name = release.name
    assert admin.get("v1/namespaces", None, name) is None
    out = release.helm("install", "--create-namespace")
    assert "STATUS: deployed" in out and "REVISION: 1" in out
    assert admin.get("v1/namespaces", None, name) is not None
    assert release.get("v1/serviceaccounts") is not None
    role = release.get(f"{RBAC}/clusterroles", namespace=None)
    assert "mlflowservers" in _rule_resources(role)  # every namespace: namespaced rules cluster-wide
    binding = release.get(f"{RBAC}/clusterrolebindings", namespace=None)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": name}]
    crd = admin.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, CRD_NAME)
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    # The README's next command: the pod is bound and reported Ready by the test Node.
    kubectl = Kubectl(control_plane.kubeconfig, release.tmp_path)
    kubectl("-n", name, "rollout", "status", f"deployment/{name}", "--timeout=60s")
    (pod,) = admin.list("v1/pods", name)
    assert pod["spec"]["serviceAccountName"] == name and pod["spec"]["nodeName"] == node.name
    assert cli.build_parser().parse_args(release.container()["args"]).all_namespaces

    out = release.helm("upgrade", values={"watchNamespaces": teams})
    assert "REVISION: 2" in out
    assert "mlflowservers" not in _rule_resources(release.get(f"{RBAC}/clusterroles", namespace=None))
    for team in teams:
        assert "mlflowservers" in _rule_resources(release.get(f"{RBAC}/roles", namespace=team))
        assert release.get(f"{RBAC}/rolebindings", namespace=team)["roleRef"]["kind"] == "Role"
    assert cli.build_parser().parse_args(release.container()["args"]).namespace == teams
    kubectl("-n", name, "rollout", "status", f"deployment/{name}", "--timeout=60s")

    assert release.helm("uninstall").strip() == f'release "{name}" uninstalled'
    for resource, namespace in [(f"{RBAC}/clusterroles", None), (f"{RBAC}/clusterrolebindings", None),
                                (f"{RBAC}/roles", teams[0]), (f"{RBAC}/rolebindings", teams[1]),
                                ("v1/serviceaccounts", name), ("apps/v1/deployments", name)]:
        wait_for(lambda: release.get(resource, namespace=namespace) is None, 30, f"{resource} deleted")
    assert admin.list("v1/secrets", name, labels="owner=helm") == []  # the release records
    # Helm never deletes a CRD (it would delete every MLflowServer with it).
    assert admin.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, CRD_NAME) is not None


def run_notes_step(notes: str, step: int, plane: ControlPlane, home: Path) -> str:
    """Run the shell commands of step `step` of the NOTES helm printed, as a user pastes
    them (bash, kubectl on PATH, the admin kubeconfig); returns their output."""
    start = notes.index(f"\n{step}. ")
    end = notes.find(f"\n{step + 1}. ", start)
    block = notes[start:end if end > 0 else None]
    script = "\n".join(line[5:] for line in block.splitlines() if line.startswith("     "))
    assert script.startswith("kubectl "), block
    env = {"PATH": f"{h.BIN}:/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": str(plane.kubeconfig)}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                            env=env, timeout=150)
    assert result.returncode == 0, f"NOTES step {step} failed:\n{script}\n{result.stderr}"
    return result.stdout


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def _alive(proc: subprocess.Popen[bytes], liveness: str, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"operator exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(liveness, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _operator_argv(container: dict[str, Any]) -> tuple[list[str], str]:
    """The installed Deployment's args, with the liveness endpoint on a free local port
    (the pod's 0.0.0.0:8080 may be taken on a shared test machine)."""
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    args = [f"--liveness={liveness}" if a.startswith("--liveness=") else a for a in container["args"]]
    assert args != container["args"], "the chart passes --liveness=URL"
    return [str(OPERATOR), *args], liveness


@pytest.mark.slow
def test_operator_with_the_charts_args_and_service_account_makes_a_server_ready(
        release: Release, teams: list[str], node: Node, admin: Kube, control_plane: ControlPlane) -> None:
    team = teams[0]
    notes = release.helm("install", "--create-namespace", values={"watchNamespaces": [team]})
    token = admin.token_for(release.name, release.name, [API_AUDIENCE])
    kubeconfig = admin.write_kubeconfig(release.tmp_path / "operator.kubeconfig", token=token)
    argv, liveness = _operator_argv(release.container())
    log = release.tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: _alive(proc, liveness, log), 30, "the operator's liveness endpoint")
        # What helm printed: NOTES step 2 creates the server, step 3 waits and reads it.
        assert "created" in run_notes_step(notes, 2, control_plane, release.tmp_path)
        wait, table, fields = run_notes_step(notes, 3, control_plane, release.tmp_path).split("\n", 2)
        assert wait == "mlflowserver.mlflow-operator.dev/mlflow condition met"
        assert table.split()[:6] == ["NAME", "READY", "REPLICAS", "AVAILABLE", "URL", "PHASE"]
        assert fields.split("\n")[1:4] == [f"http://mlflow.{team}.svc:5000", f"https://mlflow.{team}.svc",
                                           "mlflow-admin"]
        assert admin.get(CR, team, "mlflow")["status"]["migration"]["state"] == "Succeeded"
        limit = release.container()["resources"]["limits"]["memory"]
        assert limit.endswith("Mi") and _rss_mib(proc.pid) < int(limit[:-2]), "fits the chart's memory limit"
        admin.delete(CR, team, "mlflow")
        wait_for(lambda: admin.get(CR, team, "mlflow") is None, 30, "the finalizer released")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log (tail):\n{log.read_text()[-4000:]}") from None
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    text = log.read_text()
    assert "Traceback" not in text and " 403" not in text
    assert text.lstrip().startswith("{"), "logFormat json: one JSON object per line"
