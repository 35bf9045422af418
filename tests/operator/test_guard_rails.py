"""The operator's guard rails, set by a platform engineer, on the real operator process:
`--allowed-images` (full-match regexes for spec.image) and `hostPath` volumes refused
unless `--allow-host-path`. A server that crosses one is Degraded (ImageNotAllowed,
HostPathNotAllowed) with a Warning Event and nothing of it is applied; a running server
whose image is changed to a refused one keeps its Deployment as it was. The chart's
values reach the flags.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_operator.cli import build_parser
from mlflow_operator.guards import GuardRails
from mlflow_operator.model import SpecError, parse_spec
from tests.chart import helm as h
from tests.conftest import unique_namespace
from tests.operator.harness import CR, chart_operator, server_manifest, wait_for
from tests.support.kubeapi import Kube
from tests.support.node import SimulatedRunner

MIRROR = r"registry\.internal:5000/mirror/.*"
OFFICIAL = r"ghcr\.io/mlflow-operator/mlflow-server:[0-9.]+"
HOST_PATH = {"server": {"extraVolumes": [{"name": "ca", "configMap": {"name": "ca"}},
                                         {"name": "node-logs", "hostPath": {"path": "/var/log"}}]}}


# --- the rule itself -------------------------------------------------------------------

@pytest.mark.parametrize(("image", "allowed"), [
    ("registry.internal:5000/mirror/mlflow-server:0.1.0", True),
    ("ghcr.io/mlflow-operator/mlflow-server:0.1.0", True),
    ("ghcr.io/mlflow-operator/mlflow-server:0.1.0-evil", False),  # a full match, not a prefix
    ("evil.example/ghcr.io/mlflow-operator/mlflow-server:0.1.0", False),
    ("registry.internal:5000/other/x:1", False),
    ("docker.io/library/python:3.11", False),
])
def test_images_must_match_one_pattern_fully(image: str, allowed: bool) -> None:
    rails = GuardRails((MIRROR, OFFICIAL))
    spec = parse_spec({"image": image})
    if allowed:
        rails.check(spec)
        return
    with pytest.raises(SpecError) as error:
        rails.check(spec)
    assert error.value.reason == "ImageNotAllowed"
    assert repr(image) in error.value.message and "--allowed-images" in error.value.message


def test_no_patterns_allow_every_image_and_an_unset_image_is_never_checked() -> None:
    GuardRails().check(parse_spec({"image": "anything.example/x:1"}))
    GuardRails((MIRROR,)).check(parse_spec({}))  # the operator's --default-server-image


def test_host_path_needs_the_flag() -> None:
    with pytest.raises(SpecError) as error:
        GuardRails().check(parse_spec(HOST_PATH))
    assert error.value.reason == "HostPathNotAllowed"
    assert "spec.server.extraVolumes[1] ('node-logs')" in error.value.message
    assert "--allow-host-path" in error.value.message
    GuardRails(allow_host_path=True).check(parse_spec(HOST_PATH))


def test_a_bad_pattern_stops_the_operator_at_start_with_one_line() -> None:
    result = subprocess.run([str(Path(sys.executable).with_name("mlflow-operator")), "run",
                             "--allowed-images", "ghcr.io/(unclosed"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "argument --allowed-images: 'ghcr.io/(unclosed' is not a valid regular expression" in result.stderr
    assert "Traceback" not in result.stderr


# --- the chart passes them -------------------------------------------------------------

def _run_args(objects: list[dict[str, Any]]) -> Any:
    (container,) = h.one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return build_parser().parse_args(container["args"])


def test_chart_values_reach_the_flags(tmp_path: Path) -> None:
    defaults = _run_args(h.template(tmp_path))
    assert defaults.allowed_images is None and defaults.allow_host_path is False
    args = _run_args(h.template(tmp_path, {"allowedImages": [MIRROR, OFFICIAL], "allowHostPath": True}))
    assert args.allowed_images == [MIRROR, OFFICIAL]  # backslashes and all, through YAML quoting
    assert args.allow_host_path is True


def test_chart_refuses_a_non_list(tmp_path: Path) -> None:
    error = h.template_error(tmp_path, {"allowedImages": MIRROR})
    assert "allowedImages" in error


# --- the real operator -----------------------------------------------------------------

class Rails:
    def __init__(self, admin: Kube, ns: str):
        self.admin, self.ns = admin, ns

    def degraded(self, name: str) -> dict[str, Any]:
        status = (self.admin.get(CR, self.ns, name) or {}).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), {})

    def wait_degraded(self, name: str, value: str = "True") -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            condition = self.degraded(name)  # one read: the status it shows, whole
            return condition if condition.get("status") == value else None
        return wait_for(seen, 45, f"{name} Degraded={value}")

    def warnings(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.admin.list("v1/events", self.ns)
                if e["involvedObject"].get("name") == name and e["type"] == "Warning"]

    def nothing_applied(self, name: str) -> bool:
        return (self.admin.get("v1/secrets", self.ns, f"{name}-config") is None
                and self.admin.get("apps/v1/deployments", self.ns, name) is None
                and not self.admin.list("batch/v1/jobs", self.ns,
                                        labels=f"app.kubernetes.io/instance={name}"))


@pytest.fixture(scope="module")
def rails(admin: Kube, crd: dict, proxy, tmp_path_factory) -> Iterator[Rails]:
    ns = unique_namespace("rails")
    admin.create_namespace(ns)
    workdir = tmp_path_factory.mktemp("rails")
    extra = ["--allowed-images", MIRROR, OFFICIAL,
             "--default-server-image", "registry.internal:5000/mirror/mlflow-server:0.1.0"]
    with chart_operator(admin, proxy, workdir, [ns], unique_namespace("op-rails"),
                        runner=SimulatedRunner(), extra=extra):
        yield Rails(admin, ns)


def test_an_image_outside_the_list_is_degraded_and_nothing_is_applied(rails: Rails) -> None:
    rails.admin.create(CR, server_manifest("miner", rails.ns, {"image": "evil.example/miner:1"}))
    degraded = rails.wait_degraded("miner")
    assert degraded["reason"] == "ImageNotAllowed"
    assert "'evil.example/miner:1'" in degraded["message"] and "--allowed-images" in degraded["message"]
    warning = wait_for(lambda: rails.warnings("miner"), 20, "a Warning Event for miner")[0]
    assert warning["reason"] == "ImageNotAllowed"
    assert rails.nothing_applied("miner")


def test_allowed_and_unset_images_are_deployed(rails: Rails) -> None:
    rails.admin.create(CR, server_manifest("official", rails.ns,
                                           {"image": "ghcr.io/mlflow-operator/mlflow-server:0.1.0"}))
    rails.admin.create(CR, server_manifest("plain", rails.ns))
    for name in ("official", "plain"):
        assert rails.wait_degraded(name, "False")["reason"] == "AsExpected"
        wait_for(lambda n=name: rails.admin.get("v1/secrets", rails.ns, f"{n}-config"), 30, f"{name}'s config")


def test_a_running_server_keeps_its_deployment_when_its_image_is_refused(rails: Rails) -> None:
    name = "plain"
    wait_for(lambda: rails.admin.get("apps/v1/deployments", rails.ns, name), 60, "plain's Deployment")
    before = rails.admin.get("apps/v1/deployments", rails.ns, name)
    rails.admin.patch(CR, rails.ns, name, {"spec": {"image": "docker.io/library/python:3.11"}})
    assert rails.wait_degraded(name)["reason"] == "ImageNotAllowed"
    after = rails.admin.get("apps/v1/deployments", rails.ns, name)
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] \
        == "registry.internal:5000/mirror/mlflow-server:0.1.0"
    rails.admin.patch(CR, rails.ns, name, {"spec": {"image": None}})
    rails.wait_degraded(name, "False")


def test_a_host_path_volume_is_refused_without_the_flag(rails: Rails) -> None:
    rails.admin.create(CR, server_manifest("hostpath", rails.ns, HOST_PATH))
    degraded = rails.wait_degraded("hostpath")
    assert degraded["reason"] == "HostPathNotAllowed"
    assert "spec.server.extraVolumes[1] ('node-logs')" in degraded["message"]
    assert rails.nothing_applied("hostpath")
    wait_for(lambda: [e for e in rails.warnings("hostpath") if e["reason"] == "HostPathNotAllowed"],
             20, "a HostPathNotAllowed Event")


def test_with_the_flag_a_host_path_volume_is_rendered(admin: Kube, crd: dict, proxy, tmp_path: Path) -> None:
    ns = unique_namespace("rails-hp")
    admin.create_namespace(ns)
    with chart_operator(admin, proxy, tmp_path, [ns], unique_namespace("op-rails-hp"), extra=["--allow-host-path"]):
        admin.create(CR, server_manifest("hostpath", ns, HOST_PATH))
        job = wait_for(lambda: admin.list("batch/v1/jobs", ns), 45, "the migration Job")[0]
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert volumes["node-logs"]["hostPath"]["path"] == "/var/log"
