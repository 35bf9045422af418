"""The real kubectl v1.35 (.cache/bin/kubectl, from scripts/fetch-k8s-tools) for tests.

    kubectl = Kubectl(plane.kubeconfig, tmp_path)      # any identity's kubeconfig
    kubectl("get", "mlflow", "-n", "team-a").stdout    # raises AssertionError on failure
    kubectl("apply", "-f", "-", stdin=yaml_text)       # never --validate=false: the
                                                       # API server's OpenAPI is real
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

KUBECTL = Path(__file__).resolve().parents[2] / ".cache" / "bin" / "kubectl"


class Kubectl:
    def __init__(self, kubeconfig: str | Path, home: Path):
        if not KUBECTL.is_file():
            pytest.skip(f"kubectl is not at {KUBECTL}: run scripts/fetch-k8s-tools")
        self.home = home
        # Its own HOME and discovery cache: nothing read from or left in the user's ~/.kube.
        self.env = {**os.environ, "HOME": str(home), "KUBECONFIG": str(kubeconfig)}

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(KUBECTL), "--cache-dir", str(self.home / "kube-cache"), *args],
                                input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def table(self, *args: str) -> list[dict[str, str]]:
        """`kubectl get ...` output as rows keyed by the header; empty cells are ''."""
        header, *rows = self("get", *args).stdout.splitlines()
        # Columns are left-aligned under their header word, and cells may be empty, so
        # cut each line at the header words' offsets rather than at whitespace.
        starts = [m.start() for m in re.finditer(r"\S+", header)]
        names = header.split()
        bounds = list(zip(starts, [*starts[1:], None]))
        return [{name: row[a:b].strip() for name, (a, b) in zip(names, bounds)} for row in rows]
