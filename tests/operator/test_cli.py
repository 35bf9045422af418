"""The `mlflow-operator` command as a user types it (the installed console script)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from mlflow_operator.model import parse_spec
from mlflow_operator.preview import load_server

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("mlflow-operator"))


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, input=stdin, timeout=60,
                          env={**os.environ, **(env or {})})


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_render_prints_what_the_operator_applies_for_the_examples():
    for example in ("minimal.yaml", "production.yaml"):
        path = ROOT / "examples" / example
        result = cli("render", "-f", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("# Rendered by `mlflow-operator render`")
        assert "never regenerates them" in result.stdout
        objects = _docs(result.stdout)
        kinds = [o["kind"] for o in objects]
        # Apply order: the migration Job before the Deployment that waits for it.
        assert kinds.index("Job") < kinds.index("Deployment")
        assert {"ServiceAccount", "ClusterRoleBinding", "Secret", "Service"} <= set(kinds)
        server = load_server(path.read_text())
        namespace = server["metadata"].get("namespace") or "default"
        for obj in objects:
            if obj["kind"] != "ClusterRoleBinding":
                assert obj["metadata"]["namespace"] == namespace
        spec = parse_spec(server["spec"])
        if spec.ingress.enabled:
            assert "Ingress" in kinds


def test_render_shows_user_secret_values_as_placeholders_and_fresh_generated_ones(tmp_path):
    manifest = tmp_path / "server.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
        "metadata": {"name": "tracking", "namespace": "ml"},
        "spec": {"backendStore": {"uriSecretRef": {"name": "db", "key": "uri"}}}}))
    first, second = cli("render", "-f", str(manifest)), cli("render", "-f", "-", stdin=manifest.read_text())
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "<from Secret db key uri>" in first.stdout
    secrets = [o for o in _docs(first.stdout) if o["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} >= {"tracking-config", "tracking-admin", "tracking-secret-key"}
    admin = lambda text: next(o for o in _docs(text) if o["metadata"]["name"] == "tracking-admin")  # noqa: E731
    assert admin(first.stdout) != admin(second.stdout)  # a preview, generated afresh each time


def test_render_rejects_bad_input_with_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
                                   "metadata": {"name": "x"}, "spec": {"replicas": 3}}))
    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("spec: [unclosed\n")
    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    cases = {str(bad): "SqliteWithReplicas", str(not_yaml): "not valid YAML",
             str(other): "expected exactly one MLflowServer", str(tmp_path / "missing.yaml"): "No such file"}
    for path, message in cases.items():
        result = cli("render", "-f", path)
        assert result.returncode == 2, (path, result.stdout)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("mlflow-operator render: ")


def test_run_without_credentials_says_so(tmp_path):
    env = {"KUBECONFIG": str(tmp_path / "nothing"), "KUBERNETES_SERVICE_HOST": "", "HOME": str(tmp_path)}
    result = cli("run", "--standalone", "--namespace", "ml", env=env)
    assert result.returncode == 2
    assert "no Kubernetes credentials" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_commands_and_run_options():
    top = cli("--help")
    assert top.returncode == 0
    assert "run" in top.stdout and "render" in top.stdout
    run = cli("run", "--help")
    for option in ("--namespace", "--all-namespaces", "--standalone", "--peering", "--liveness",
                   "--resync-seconds", "--log-format", "--default-server-image"):
        assert option in run.stdout
    usage = cli("run", "--namespace", "a", "--all-namespaces")
    assert usage.returncode == 2 and "not allowed with argument" in usage.stderr


def _images(text: str) -> set[str]:
    return {c["image"] for o in _docs(text) if o["kind"] in ("Deployment", "Job")
            for c in o["spec"]["template"]["spec"]["containers"]}


def test_default_server_image_from_flag_or_environment(tmp_path):
    manifest = tmp_path / "server.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
                                        "metadata": {"name": "tracking"}, "spec": {}}))
    from mlflow_operator.model import DEFAULT_IMAGE

    assert _images(cli("render", "-f", str(manifest), env={"MLFLOW_OPERATOR_DEFAULT_SERVER_IMAGE": ""}).stdout) \
        == {DEFAULT_IMAGE}
    mirror = "registry.internal:5000/mirror/mlflow-server:0.1.0"
    by_env = cli("render", "-f", str(manifest), env={"MLFLOW_OPERATOR_DEFAULT_SERVER_IMAGE": mirror})
    assert _images(by_env.stdout) == {mirror}, by_env.stderr
    by_flag = cli("render", "-f", str(manifest), "--default-server-image", "other.example/mlflow:1",
                  env={"MLFLOW_OPERATOR_DEFAULT_SERVER_IMAGE": mirror})
    assert _images(by_flag.stdout) == {"other.example/mlflow:1"}  # the flag wins
    # A CR's own spec.image still wins over the operator's default.
    manifest.write_text(manifest.read_text().replace("spec: {}", "spec: {image: own.example/mlflow:2}"))
    assert _images(cli("render", "-f", str(manifest), "--default-server-image", mirror).stdout) \
        == {"own.example/mlflow:2"}
    for argv, env in ((["--default-server-image", "has space"], {}),
                      ([], {"MLFLOW_OPERATOR_DEFAULT_SERVER_IMAGE": "bad image"})):
        result = cli("run", "--standalone", *argv, env=env)
        assert result.returncode == 2
        assert "argument --default-server-image:" in result.stderr and "not an image reference" in result.stderr
        assert "Traceback" not in result.stderr
