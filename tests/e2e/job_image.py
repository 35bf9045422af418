"""A training job's "image" for the e2e tests: a venv holding only `mlflow-skinny` (with
what it pulls) and the job package `mlflow-k8s-token`, nothing of the dev environment.

There is no container runtime here; a pod's image is a Python environment (see
tests/e2e/sandbox.py). This one is what the README asks of a job image, installed from
uv.lock (the versions the dev environment and the images use): `uv export` of the job
package's dependency tree, `uv pip sync` into a fresh venv, then the package itself,
non-editable, as `pip install ./packages/mlflow-k8s-token` would.

Built once per lock and package content, under .cache/job-image/<key>/ (inside the
repository, so the e2e sandbox's "image" paths cover it), reused afterwards in about a
millisecond. A cold build takes seconds with a warm uv cache (uv's cache is used, so no
network is needed once the wheels have been fetched).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "packages" / "mlflow-k8s-token"
PACKAGE_NAME = "mlflow-k8s-token"
CACHE = ROOT / ".cache" / "job-image"
REFRESH = (PACKAGE_NAME,)  # built from this repository: never a stale cached wheel
_READY = "ready.json"


def uv_binary() -> str:
    """The uv that scripts/bootstrap installs into .venv (pinned in pyproject.toml)."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise RuntimeError("uv is not installed: run scripts/bootstrap")
    return found


def _key() -> str:
    """Changes when the lock, the package's files or this Python change."""
    digest = hashlib.sha256((ROOT / "uv.lock").read_bytes())
    sources = [PACKAGE / "pyproject.toml", PACKAGE / "README.md", *PACKAGE.glob("src/*/*.py")]
    for path in sorted(sources):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def _run(argv: list[str], **kwargs: object) -> str:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)  # uv acts on the venv it is told, never the caller's
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed:\n{done.stderr[-3000:]}")
    return done.stdout


def locked_requirements(package: str = PACKAGE_NAME) -> str:
    """Pinned, hashed requirements of `package`'s dependency tree from uv.lock (the
    workspace's own packages left out)."""
    return _run([uv_binary(), "export", "--frozen", "--package", package, "--no-emit-workspace",
                 "--no-header", "--quiet"])


def make_venv(target: Path, requirements: str, extra: Sequence[str] = ()) -> Path:
    """A fresh venv at `target` holding exactly `requirements` (+ `extra`, no deps)."""
    uv = uv_binary()
    _run([uv, "venv", "--quiet", "--no-project", "--python", sys.executable, str(target)])
    python = target / "bin" / "python"
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as reqs:
        reqs.write(requirements)
        reqs.flush()
        _run([uv, "pip", "sync", "--quiet", "--python", str(python), "--compile-bytecode", reqs.name])
    if extra:
        # --refresh-package: uv would otherwise reuse a wheel it built from an older copy of a
        # local directory whose pyproject.toml did not change.
        refresh = [arg for name in REFRESH for arg in ("--refresh-package", name)]
        _run([uv, "pip", "install", "--quiet", "--python", str(python), "--no-deps",
              "--compile-bytecode", *refresh, *extra])
    return python


def distributions(python: Path) -> dict[str, str]:
    """{normalized name: version} of every distribution installed in `python`'s venv."""
    code = ("import importlib.metadata as m, json, re; print(json.dumps({re.sub(r'[-_.]+', '-', "
            "d.metadata['Name']).lower(): d.version for d in m.distributions()}))")
    return json.loads(_run([str(python), "-I", "-c", code]))  # -I: not the cwd's egg-info


def job_python() -> Path:
    """The python of the cached job image (built on first use)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / _key()
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes never build the same venv at once
        if (target / _READY).exists():
            return target / "bin" / "python"
        shutil.rmtree(target, ignore_errors=True)  # a half-built one from an interrupted run
        python = make_venv(target, locked_requirements(), [str(PACKAGE)])
        installed = distributions(python)
        (target / _READY).write_text(json.dumps(installed, indent=1, sort_keys=True))
        return python


if __name__ == "__main__":
    print(job_python())
