"""The demo's and the end-to-end tests' Node is named after a mkdtemp folder: every
suffix mkdtemp can draw must give a name the API server accepts."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.stack import node_name

# kube-apiserver's rule for a Node name that is also a label value.
VALID = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("folder", ["mlflow-operator-demo-c0_7s1v_", "mlflow-operator-demo-_ab_c_d", "Inject0",
                                    "x" * 80 + "_", "demo.__"])
def test_a_work_folder_gives_a_valid_node_name(folder: str) -> None:
    name = node_name(Path("/tmp") / folder)
    assert VALID.fullmatch(name) and len(name) <= 63, name
