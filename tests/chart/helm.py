"""Running the real helm and kubectl binaries (unpacked by scripts/fetch-k8s-tools)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlflow-operator"
BIN = ROOT / ".cache" / "bin"
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"
RELEASE, NAMESPACE = "mlflow-operator", "mlflow-operator"


def require(binary: Path) -> Path:
    if not binary.is_file():
        pytest.skip(f"{binary.name} is not at {binary}: run scripts/fetch-k8s-tools "
                    "(scripts/bootstrap and .ci/run do)")
    return binary


def helm(*args: str, check: bool = True, kubeconfig: str | Path | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run helm; with `kubeconfig`, against that cluster (install, upgrade, uninstall)."""
    # A private HOME-less environment: helm must not read or write the user's config.
    env = {"HELM_CACHE_HOME": "/tmp/helm-test/cache", "HELM_CONFIG_HOME": "/tmp/helm-test/config",
           "HELM_DATA_HOME": "/tmp/helm-test/data", "HOME": "/tmp/helm-test/home", "PATH": "/usr/bin:/bin"}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run([str(require(HELM)), *args], capture_output=True, text=True,
                            env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def values_args(values: dict[str, Any] | None, tmp_path: Path) -> list[str]:
    if not values:
        return []
    path = tmp_path / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def template(tmp_path: Path, values: dict[str, Any] | None = None,
             *extra: str, namespace: str = NAMESPACE, release: str = RELEASE) -> list[dict[str, Any]]:
    """`helm template` output as objects (CRDs included, as `helm install` applies them)."""
    out = helm("template", release, str(CHART), "--namespace", namespace, "--include-crds",
               *values_args(values, tmp_path), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def template_error(tmp_path: Path, values: dict[str, Any]) -> str:
    """stderr of a `helm template` that must fail."""
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                  *values_args(values, tmp_path), check=False)
    assert result.returncode != 0, f"helm accepted {values}:\n{result.stdout[:2000]}"
    return result.stderr


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
