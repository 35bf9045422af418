"""operator/Dockerfile and plugin/Dockerfile, checked without a docker engine.

Statically: pinned base, multi-stage with only the venv in the final stage, numeric
non-root user matching the pods' runAsUser, every COPY source present in the build
context (.dockerignore applied), extras that exist in pyproject.toml, and entry commands
equal to what the operator renders (`mlflow-operator render`) and the chart runs.
Dynamically (slow): the operator image's install step, run into a fresh venv from the
build context .dockerignore lets through, yields a working `mlflow-operator` without MLflow.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from mlflow_operator import cli

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"operator": ROOT / "operator" / "Dockerfile", "plugin": ROOT / "plugin" / "Dockerfile"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")
VENV_BIN = "/opt/venv/bin"


# ---- a small Dockerfile reader --------------------------------------------------------

@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.image}"
        return found[-1]


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    return lines


def parse(path: Path) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image, *alias = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()
            stages.append(Stage(image, alias[1] if alias else None))
        else:
            assert stages, f"{keyword} before FROM in {path}"
            stages[-1].instructions.append((keyword, rest))
    return stages


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def copies(stage: Stage) -> list[tuple[dict[str, str], list[str], str]]:
    """(flags, sources, destination) of each COPY."""
    out = []
    for rest in stage.all("COPY"):
        words = rest.split()
        flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
        paths = [w for w in words if not w.startswith("--")]
        out.append((flags, paths[:-1], paths[-1]))
    return out


# ---- .dockerignore (Docker's rules: last matching pattern wins; a pattern matching a
# parent directory applies to everything below it) --------------------------------------

def _pattern(text: str) -> re.Pattern[str]:
    text = text.strip().strip("/")
    regex = ""
    i = 0
    while i < len(text):
        if text.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif text[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif text[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(text[i]), i + 1
    return re.compile(f"^{regex}$")


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line.lstrip("!"))))
    return rules


def in_context(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negated, pattern in rules:
        if any(pattern.match(p) for p in prefixes):
            excluded = not negated
    return not excluded


def build_context(dest: Path) -> None:
    """Copy what `docker build .` would send (the repository filtered by .dockerignore)."""
    rules = dockerignore()
    for top, dirs, files in os.walk(ROOT):
        rel_top = Path(top).relative_to(ROOT).as_posix()
        rel = "" if rel_top == "." else rel_top + "/"
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", ".cache")]
        for name in files:
            if in_context(rel + name, rules):
                target = dest / (rel + name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(top) / name, target)


# ---- helpers about the project -----------------------------------------------------------

def uv_sync(stage: Stage) -> str:
    """The stage's `uv sync ...` command (the install from uv.lock)."""
    (command,) = [m.group(0) for run in stage.all("RUN")
                  for m in re.finditer(r"uv sync[^&]*", run)]
    return command.strip()


def installed_extras(stage: Stage) -> set[str]:
    return set(re.findall(r"--extra (\S+)", uv_sync(stage)))


def final_user(stage: Stage) -> tuple[int, int]:
    user = stage.last("USER")
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER must be numeric uid:gid (runAsNonRoot can only verify numbers): {user}"
    return int(match.group(1)), int(match.group(2))


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", rest):
            env[key] = value.replace("$PATH", env.get("PATH", "$PATH"))
    return env


def rendered(kind: str) -> dict[str, Any]:
    """One object of what `mlflow-operator render` prints for examples/minimal.yaml."""
    exe = Path(sys.executable).with_name("mlflow-operator")
    out = subprocess.run([str(exe), "render", "-f", str(ROOT / "examples" / "minimal.yaml")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    (obj,) = [o for o in yaml.safe_load_all(out) if o and o.get("kind") == kind]
    return obj


# ---- tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_is_pinned_by_digest_and_build_is_multi_stage(image: str) -> None:
    stages = parse(DOCKERFILES[image])
    assert len(stages) >= 2
    for stage in stages:
        assert BASE.match(stage.image), f"unpinned base {stage.image}"
    assert len({s.image for s in stages}) == 1  # the venv is built for the runtime's Python
    assert len({parse(p)[0].image for p in DOCKERFILES.values()}) == 1  # one base to update


@pytest.mark.parametrize("image", DOCKERFILES)
def test_final_stage_holds_only_the_venv(image: str) -> None:
    *builds, final = parse(DOCKERFILES[image])
    build_names = {s.name for s in builds}
    for flags, sources, dest in copies(final):
        assert flags.get("from") in build_names, f"final stage copies {sources} from the context"
        assert sources == ["/opt/venv"] and dest == "/opt/venv"
    for run in final.all("RUN"):
        assert not re.search(r"apt-get|apk |pip |gcc|build-essential|make\b|curl|wget", run), run
    # The build stage is where the installer runs.
    assert any("uv sync" in run for b in builds for run in b.all("RUN"))


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_copied_path_is_in_the_build_context(image: str) -> None:
    rules = dockerignore()
    for stage in parse(DOCKERFILES[image]):
        for flags, sources, _ in copies(stage):
            if "from" in flags:
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"{image}/Dockerfile copies {source}, which does not exist"
                assert in_context(source, rules), f".dockerignore keeps {source} out of the context"
    # pyproject.toml names README.md as the readme: the build fails without it.
    assert PYPROJECT["project"]["readme"] in {s for st in parse(DOCKERFILES[image])
                                               for _, srcs, _ in copies(st) for s in srcs}


def test_dockerignore_keeps_local_state_out() -> None:
    rules = dockerignore()
    for path in (".venv/bin/python", ".cache/bin/helm", ".git/config", "tests/conftest.py",
                 "operator/mlflow_operator/__pycache__/cli.cpython-311.pyc", "bench/x.py",
                 "mlflow_operator.egg-info/PKG-INFO", "charts/mlflow-operator/Chart.yaml",
                 "packages/mlflow-k8s-token/build/lib/mlflow_k8s_token/__init__.py"):
        assert not in_context(path, rules), path
    for path in ("pyproject.toml", "uv.lock", "README.md", "operator/mlflow_operator/cli.py",
                 "plugin/mlflow_k8s_auth/app.py", "packages/mlflow-k8s-token/pyproject.toml",
                 "packages/mlflow-k8s-token/src/mlflow_k8s_token/__init__.py"):
        assert in_context(path, rules), path


@pytest.mark.parametrize("image,extras", [("operator", {"operator"}), ("plugin", {"server", "cloud"})])
def test_installs_the_projects_extras(image: str, extras: set[str]) -> None:
    build = parse(DOCKERFILES[image])[0]
    assert installed_extras(build) == extras
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_installs_exactly_the_lock_with_the_pinned_uv(image: str) -> None:
    build = parse(DOCKERFILES[image])[0]
    command = uv_sync(build)
    # --frozen: uv.lock as it is, never re-resolved; --no-editable: no sources needed later
    assert "--frozen" in command.split() and "--no-editable" in command.split()
    assert env_of(build)["UV_PROJECT_ENVIRONMENT"] == VENV_BIN.removesuffix("/bin")
    (pin,) = [d for d in PYPROJECT["project"]["optional-dependencies"]["dev"] if d.startswith("uv==")]
    assert f"pip install {pin}" in build.all("RUN")
    copied = {s for _, sources, _ in copies(build) for s in sources}
    assert {"pyproject.toml", "uv.lock", "packages/mlflow-k8s-token/"} <= copied


def test_operator_image_has_no_mlflow() -> None:
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["operator"]
    assert not [d for d in deps if Requirement(d).name.startswith("mlflow")]
    # The operator's modules import without MLflow (None in sys.modules blocks an import);
    # of the plugin they may use only mlflow_k8s_auth.config, which imports nothing of MLflow.
    code = ("import sys; sys.modules['mlflow'] = None; sys.modules['mlflow_k8s_token'] = None\n"
            "import mlflow_operator.cli, mlflow_operator.runner, mlflow_operator.handlers, "
            "mlflow_operator.preview")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_server_image_has_drivers_and_cloud_clients() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    names = {Requirement(d).name for d in extras["server"] + extras["cloud"]}
    assert {"psycopg2-binary", "pymysql", "boto3", "google-cloud-storage", "azure-storage-blob"} <= names
    assert any(Requirement(d).name == "mlflow" and "auth" in Requirement(d).extras for d in extras["server"])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_runs_as_numeric_non_root_user(image: str) -> None:
    final = parse(DOCKERFILES[image])[-1]
    uid, gid = final_user(final)
    assert uid >= 1000 and gid >= 1000
    env = env_of(final)
    assert env["PATH"].startswith(VENV_BIN + ":")
    assert env["HOME"] == "/tmp" and final.last("WORKDIR") == "/tmp"  # writable emptyDir


def test_plugin_image_runs_what_the_operator_renders() -> None:
    final = parse(DOCKERFILES["plugin"])[-1]
    entrypoint, cmd = exec_form(final.last("ENTRYPOINT")), exec_form(final.last("CMD"))
    deployment = rendered("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == entrypoint == ["mlflow"]
    args = container["args"]
    assert args[:3] == cmd[:3] == ["server", "--app-name", "k8s-auth"]
    for flag in ("--host", "--port"):
        assert args[args.index(flag) + 1] == cmd[cmd.index(flag) + 1], flag
    port = container["ports"][0]["containerPort"]
    assert final.last("EXPOSE") == str(port)
    assert pod["securityContext"]["runAsUser"] == final_user(final)[0]
    assert container["workingDir"] == final.last("WORKDIR")
    # The migration Job runs `mlflow ...` and `python -m mlflow.server.auth ...`: both are
    # the venv's, first on the image's PATH.
    job = rendered("Job")["spec"]["template"]["spec"]
    for c in job["initContainers"] + job["containers"]:
        assert c["image"] == container["image"]
        assert c["command"][0] in ("mlflow", "python")


def test_operator_image_runs_what_the_chart_passes() -> None:
    final = parse(DOCKERFILES["operator"])[-1]
    entrypoint, cmd = exec_form(final.last("ENTRYPOINT")), exec_form(final.last("CMD"))
    assert entrypoint == ["mlflow-operator"]
    assert "mlflow-operator" in PYPROJECT["project"]["scripts"]
    args = cli.build_parser().parse_args(cmd)
    assert args.all_namespaces and args.standalone and args.liveness
    values = yaml.safe_load((ROOT / "charts" / "mlflow-operator" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == final_user(final)[0]
    assert f":{values['liveness']['port']}{values['liveness']['path']}" in args.liveness
    assert final.last("EXPOSE") == str(values["liveness"]["port"])


@pytest.mark.slow
def test_operator_image_install_step_yields_a_working_operator_without_mlflow(tmp_path: Path) -> None:
    """The build stage's install, replayed from the filtered build context into a fresh
    venv (no docker here): the result runs `mlflow-operator render` and has no MLflow."""
    context = tmp_path / "context"
    build_context(context)
    build = parse(DOCKERFILES["operator"])[0]
    command = uv_sync(build).split()
    assert command[:2] == ["uv", "sync"]
    python_flag = command.index("--python")
    del command[python_flag:python_flag + 2]  # the image's Python is this one here
    venv = tmp_path / "venv"
    uv = Path(sys.executable).with_name("uv")
    env = {**{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
           **env_of(build), "UV_PROJECT_ENVIRONMENT": str(venv)}
    env.pop("UV_NO_CACHE")  # the uv cache makes the replay fast; the image has none
    result = subprocess.run([str(uv), *command[1:], "--python", sys.executable, "--quiet"],
                            cwd=context, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    blocked = subprocess.run([str(venv / "bin" / "python"), "-c", "import mlflow"],
                             capture_output=True, text=True, timeout=60)
    assert blocked.returncode != 0 and "No module named 'mlflow'" in blocked.stderr
    assert not (venv / "bin" / "pip").exists()
    out = subprocess.run([str(venv / "bin" / "mlflow-operator"), "render", "-f",
                          str(ROOT / "examples" / "minimal.yaml")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    kinds = {o["kind"] for o in yaml.safe_load_all(out.stdout) if o}
    assert {"Deployment", "Job", "Service", "Secret"} <= kinds
