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
        assert result.stdout == cli("render", "-f", str(path)).stdout
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


SERVER = {"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
          "metadata": {"name": "tracking", "namespace": "ml"},
          "spec": {"backendStore": {"uriSecretRef": {"name": "db", "key": "uri"}}}}


def _by_name(text: str) -> dict[str, dict]:
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in _docs(text)}


def test_render_twice_prints_the_same_bytes_without_generated_secrets(tmp_path):
    manifest = tmp_path / "server.yaml"
    manifest.write_text(yaml.safe_dump(SERVER))
    first, second = cli("render", "-f", str(manifest)), cli("render", "-f", "-", stdin=manifest.read_text())
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout  # what a GitOps repository commits diffs cleanly
    assert "<from Secret db key uri>" in first.stdout
    objects = _by_name(first.stdout)
    assert "Secret/tracking-config" in objects
    assert "Secret/tracking-admin" not in objects and "Secret/tracking-secret-key" not in objects
    assert "left out (--include-secrets shows them): Secret tracking-admin, Secret tracking-secret-key" \
        in first.stdout
    job = next(name for name in objects if name.startswith("Job/tracking-migrate-"))
    # A spec change that the cluster's Job name follows (the image) moves the preview's too.
    manifest.write_text(yaml.safe_dump({**SERVER, "spec": {**SERVER["spec"], "image": "own.example/m:2"}}))
    changed = _by_name(cli("render", "-f", str(manifest)).stdout)
    assert job not in changed and any(n.startswith("Job/tracking-migrate-") for n in changed)


def test_render_include_secrets_prints_fresh_generated_values(tmp_path):
    manifest = tmp_path / "server.yaml"
    manifest.write_text(yaml.safe_dump(SERVER))
    first, second = (cli("render", "-f", str(manifest), "--include-secrets") for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = _by_name(first.stdout), _by_name(second.stdout)
    for name in ("Secret/tracking-admin", "Secret/tracking-secret-key"):
        assert a[name]["stringData"] != b[name]["stringData"]  # generated afresh each time
    assert len(a["Secret/tracking-admin"]["stringData"]["password"]) >= 12
    assert "fresh for this preview (--include-secrets)" in first.stdout
    # The Job name is keyed with the (fresh) secret key, as in the cluster.
    assert {n for n in a if n.startswith("Job/")} != {n for n in b if n.startswith("Job/")}


def _run_render(path: Path) -> list[str]:
    result = cli("render", "-f", str(path))
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("mlflow-operator render: ") for line in lines), lines
    return [line.removeprefix("mlflow-operator render: ") for line in lines]


def test_render_reports_every_problem_of_every_document_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: mlflow-operator.dev/v1alpha1\n"
        "kind: MLflowServer\n"
        "metadata: {name: a, namespace: ml}\n"
        "spec:\n"
        "  replicas: many\n"
        "  tolerations: [{operator: Exists}, {operator: Sometimes}]\n"
        "  server: {workers: 0, extraArgs: [--port=8000]}\n"
        "  service: {port: 70000}\n"
        "---\n"
        "apiVersion: v1\n"
        "kind: Secret\n"
        "metadata: {name: other-objects-are-skipped}\n"
        "---\n"
        "apiVersion: mlflow-operator.dev/v1alpha1\n"
        "kind: MLflowServer\n"
        "metadata: {name: b}\n"
        "spec: {replicas: 3}\n"
        "---\n"
        "apiVersion: mlflow-operator.dev/v1\n"
        "kind: MLflowServer\n"
        "metadata: {}\n")
    lines = _run_render(bad)
    where = f"{bad}:1: MLflowServer ml/a: "
    assert lines == [
        where + "spec.replicas: Input should be a valid integer, unable to parse string as an integer (InvalidSpec)",
        where + "spec.tolerations[1].operator: Input should be 'Exists' or 'Equal' (InvalidSpec)",
        where + "spec.server.workers: Input should be greater than or equal to 1 (InvalidSpec)",
        where + "spec.server.extraArgs: --port is set by the operator; use the matching spec field"
                " (ConflictingServerArgs)",
        where + "spec.service.port: Input should be less than or equal to 65535 (InvalidSpec)",
        f"{bad}:14: MLflowServer default/b: spec.replicas > 1 requires backendStore.uriSecretRef (an external"
        " database); sqlite on a volume cannot be shared by several pods (SqliteWithReplicas)",
        f"{bad}:19: document 4 (MLflowServer): apiVersion must be mlflow-operator.dev/v1alpha1,"
        " not 'mlflow-operator.dev/v1'",
        f"{bad}:19: document 4 (MLflowServer): metadata.name is required",
        "8 problems, nothing rendered",
    ], lines


def test_render_names_line_and_column_of_a_yaml_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: mlflow-operator.dev/v1alpha1\nkind: MLflowServer\nspec:\n  auth: [unclosed\n  replicas: 1\n")
    lines = _run_render(broken)
    assert lines[0].startswith(f"{broken}:5:11: not valid YAML: "), lines
    assert "expected ',' or ']'" in lines[0]
    assert lines[1] == "1 problem, nothing rendered"
    tab = tmp_path / "tab.yaml"
    tab.write_text("kind: MLflowServer\nspec:\n\treplicas: 1\n")
    assert _run_render(tab)[0].startswith(f"{tab}:3:1: not valid YAML: ")


def test_render_rejects_unusable_files_with_one_clear_line(tmp_path):
    other = tmp_path / "cm.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    cases = {other: f"{other}: no MLflowServer object (apiVersion mlflow-operator.dev/v1alpha1) in the file",
             binary: f"{binary}: not a UTF-8 text file",
             tmp_path / "missing.yaml": f"cannot read {tmp_path / 'missing.yaml'}: No such file or directory"}
    for path, message in cases.items():
        lines = _run_render(path)
        assert lines[0] == message, lines
    usage = cli("render")
    assert usage.returncode == 2 and "the following arguments are required: -f/--filename" in usage.stderr


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mlflow-operator {version('mlflow-operator')}"


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
                   "--resync-seconds", "--log-format", "--default-server-image", "--metrics-port"):
        assert option in run.stdout
    usage = cli("run", "--namespace", "a", "--all-namespaces")
    assert usage.returncode == 2 and "not allowed with argument" in usage.stderr
    port = cli("run", "--metrics-port", "http")
    assert port.returncode == 2 and "argument --metrics-port: 'http' is not a port number" in port.stderr


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
