"""uv.lock is the one lock of every environment the README and CI create.

The dev .venv (scripts/bootstrap: `uv sync --frozen --extra dev`), the images
(`uv sync --frozen --no-editable --extra ...`, tests/test_dockerfiles.py) and the job image
of the e2e tests (tests/e2e/job_image.py: `uv export --package mlflow-k8s-token`) all install
from it. Here: the lock matches pyproject.toml, .venv matches the lock, every uv pin is the
same version, and `scripts/demo --help` answers at once without installing anything.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())


def _uv(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run([str(UV), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_lock_matches_pyproject() -> None:
    done = _uv("lock", "--check")
    assert done.returncode == 0, (
        "uv.lock is stale: run `.venv/bin/uv lock` and commit uv.lock\n" + done.stderr[-2000:])


WORKSPACE = {"mlflow-operator", "mlflow-k8s-token"}


def test_venv_is_exactly_the_lock() -> None:
    done = _uv("sync", "--frozen", "--extra", "dev", "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    # "- name==version" / "+ name==version" lines; the workspace's own editable installs
    # are rebuilt whenever pyproject.toml is touched, which changes no version.
    changes = [line.strip() for line in done.stderr.splitlines()
               if re.match(r"\s*[-+~] ", line) and line.split()[1].split("=")[0] not in WORKSPACE]
    assert not changes, ".venv differs from uv.lock: run scripts/bootstrap\n" + "\n".join(changes)


def test_one_uv_version_everywhere() -> None:
    (pin,) = [d for d in PYPROJECT["project"]["optional-dependencies"]["dev"] if d.startswith("uv==")]
    version = pin.removeprefix("uv==")
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert re.search(rf"^UV_VERSION={re.escape(version)}\b", bootstrap, re.MULTILINE)
    assert PYPROJECT["tool"]["uv"]["required-version"] == f"=={version}"
    (locked,) = [p["version"] for p in LOCK["package"] if p["name"] == "uv"]
    assert locked == version
    out = subprocess.run([str(UV), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["uv", version]


def test_bootstrap_installs_the_lock_as_it_is() -> None:
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert re.search(r"uv sync --frozen --extra dev\b", bootstrap)
    assert "pip install -e" not in bootstrap  # no resolution at install time
    # The workspace's members are locked together with the project.
    assert {p["name"] for p in LOCK["package"]} >= {"mlflow-operator", "mlflow-k8s-token"}
    assert PYPROJECT["tool"]["uv"]["workspace"]["members"] == ["packages/mlflow-k8s-token"]


def test_demo_help_answers_at_once_and_installs_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([str(ROOT / "scripts" / "demo"), "--help"], capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - started
    print(f"\nscripts/demo --help: {elapsed:.2f} s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: scripts/demo") and "--exit-after-job" in done.stdout
    assert "Preparing" not in done.stdout + done.stderr
    assert elapsed < 10
    # In a clone with no .venv yet: the usage from the script itself, nothing created.
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "demo", tmp_path / "scripts" / "demo")
    bare = subprocess.run([str(tmp_path / "scripts" / "demo"), "-h"], capture_output=True,
                          text=True, timeout=60)
    assert bare.returncode == 0, bare.stderr
    assert "scripts/demo --exit-after-job" in bare.stdout and "scripts/bootstrap" in bare.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scripts"]
