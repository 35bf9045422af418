"""The job package mlflow-k8s-token: what a training image needs, and nothing more.

Measured as a user would: a fresh venv with only `mlflow-skinny` (and what it pulls),
then `pip install ./packages/mlflow-k8s-token` (uv's pip, from the uv cache when warm):
exactly one new distribution. In the job image of the e2e tests (tests/e2e/job_image.py)
`MLFLOW_TRACKING_AUTH=k8s-token` resolves to the provider, and the real MLflow client sends
the token file's content, re-read after the kubelet rotates it.
"""
from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.e2e import job_image

PROVIDER = "k8s-token"
GROUP = "mlflow.request_auth_provider"
PACKAGE_PYPROJECT = tomllib.loads((job_image.PACKAGE / "pyproject.toml").read_text())


def _locked_pins() -> str:
    """Every version uv.lock pins (no hashes), as constraints: the venvs below get the
    lock's versions, so the measurement does not move when PyPI does."""
    return job_image._run([job_image.uv_binary(), "export", "--frozen", "--all-extras",
                           "--no-emit-workspace", "--no-hashes", "--no-header", "--quiet"])


def _pip_install(python: Path, *args: str, constraints: Path) -> None:
    job_image._run([job_image.uv_binary(), "pip", "install", "--quiet", "--python", str(python),
                    "-c", str(constraints), *args])


def _installed_bytes(python: Path, dist: str) -> tuple[int, int]:
    code = ("import importlib.metadata as m, os, sys; d = m.distribution(sys.argv[1]); "
            "fs = [d.locate_file(f) for f in d.files]; "
            "print(len(fs), sum(os.path.getsize(f) for f in fs if os.path.isfile(f)))")
    files, size = job_image._run([str(python), "-I", "-c", code, dist]).split()
    return int(files), int(size)


def test_package_adds_exactly_one_distribution_to_an_mlflow_skinny_venv(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(_locked_pins())
    venv = tmp_path / "job"
    job_image._run([job_image.uv_binary(), "venv", "--quiet", "--no-project", "--python",
                    sys.executable, str(venv)])
    python = venv / "bin" / "python"
    _pip_install(python, "mlflow-skinny", constraints=constraints)
    before = job_image.distributions(python)
    assert "mlflow-skinny" in before and "mlflow" not in before

    started = time.monotonic()
    _pip_install(python, "--refresh-package", job_image.PACKAGE_NAME, str(job_image.PACKAGE),
                 constraints=constraints)  # with its dependencies
    elapsed = time.monotonic() - started
    after = job_image.distributions(python)

    added = {name: version for name, version in after.items() if name not in before}
    changed = {name for name in before if after.get(name) != before[name]}
    files, size = _installed_bytes(python, "mlflow-k8s-token")
    print(f"\njob package footprint: +{len(added)} distribution ({', '.join(sorted(added))}), "
          f"{files} files, {size / 1024:.1f} KiB, installed in {elapsed:.1f} s over "
          f"{len(before)} distributions of mlflow-skinny {before['mlflow-skinny']}")
    assert added == {"mlflow-k8s-token": PACKAGE_PYPROJECT["project"]["version"]}
    assert not changed
    assert size < 64 * 1024


def test_declared_dependencies_are_mlflows_own() -> None:
    """Nothing beyond what `mlflow-skinny` already requires."""
    declared = {Requirement(r).name for r in PACKAGE_PYPROJECT["project"]["dependencies"]}
    skinny = {Requirement(r).name for r in importlib.metadata.requires("mlflow-skinny") or []
              if "extra ==" not in r}
    assert "mlflow-skinny" in declared
    assert declared - {"mlflow-skinny"} <= skinny


def test_one_distribution_registers_the_provider_in_the_dev_environment() -> None:
    found = [(ep.value, ep.dist.name if ep.dist else None)
             for ep in importlib.metadata.entry_points(group=GROUP) if ep.name == PROVIDER]
    assert found == [("mlflow_k8s_token:K8sTokenAuthProvider", "mlflow-k8s-token")]


class _Recorder(http.server.BaseHTTPRequestHandler):
    """An MLflow REST endpoint that records the Authorization header of each request."""
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.headers.get("Authorization"))
        body = json.dumps({"experiments": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str | None]]]:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


# Runs in the job image: two searches, with the token file rotated in between.
_CLIENT = """
import pathlib, sys, warnings
warnings.simplefilter("error")  # "Could not find any registered plugin for k8s-token" fails
import mlflow
path = pathlib.Path(sys.argv[1])
client = mlflow.MlflowClient()
client.search_experiments()
path.write_text("rotated-token\\n")
client.search_experiments()
"""


def test_job_image_sends_the_service_account_token(tmp_path: Path,
                                                   recorder: tuple[str, list[str | None]]) -> None:
    url, seen = recorder
    python = job_image.job_python()
    installed = job_image.distributions(python)
    assert {"mlflow-skinny", "mlflow-k8s-token"} <= set(installed)
    assert not {"mlflow", "mlflow-operator", "kubernetes", "kopf"} & set(installed)
    token = tmp_path / "token"
    token.write_text("first-token\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV"))}
    env |= {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_AUTH": PROVIDER,
            "MLFLOW_K8S_TOKEN_PATH": str(token), "PYTHONPATH": ""}
    done = subprocess.run([str(python), "-c", _CLIENT, str(token)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert seen == ["Bearer first-token", "Bearer rotated-token"]


def test_job_image_names_a_missing_token_file(tmp_path: Path,
                                              recorder: tuple[str, list[str | None]]) -> None:
    url, seen = recorder
    missing = tmp_path / "no-such-token"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV"))}
    env |= {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_AUTH": PROVIDER,
            "MLFLOW_K8S_TOKEN_PATH": str(missing)}
    done = subprocess.run([str(job_image.job_python()), "-c",
                           "import mlflow; mlflow.MlflowClient().search_experiments()"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"k8s-token auth: no ServiceAccount token at {missing}" in done.stderr
    assert seen == []  # nothing was sent without the token
