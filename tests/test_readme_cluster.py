"""The README's path from clone to cluster: the commands a user pastes fit together.

Step 0 builds two images and loads them into kind or minikube; step 1's `helm install`
must then make the operator run the first and default MLflow servers to the second.
The helm line is run here as `helm template` with the same flags (no cluster needed), and
the images it renders are compared with the tags step 0 builds and loads.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from tests.chart import helm as h

README = (h.ROOT / "README.md").read_text()


def _block_after(heading: str) -> str:
    section = README[README.index(heading):]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, f"no bash block after {heading!r}"
    return match.group(1)


def _commands(block: str, variables: dict[str, str]) -> list[list[str]]:
    """The block's commands, continuation lines joined, comments dropped, $VARS expanded."""
    text = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if m := re.fullmatch(r"(\w+)=(\S+)", line):
            variables[m.group(1)] = m.group(2)
            continue
        out.append([re.sub(r"\$(\w+)", lambda v: variables[v.group(1)], w) for w in shlex.split(line)])
    return out


def test_images_built_loaded_and_installed_are_the_same(tmp_path: Path) -> None:
    variables: dict[str, str] = {}
    build = _commands(_block_after("### 0. Build the two images"), variables)
    built = {}
    for argv in build:
        if argv[:2] == ["docker", "build"]:
            dockerfile, tag = argv[argv.index("-f") + 1], argv[argv.index("-t") + 1]
            assert (h.ROOT / dockerfile).is_file() and argv[-1] == "."
            built[dockerfile] = tag
    assert set(built) == {"operator/Dockerfile", "plugin/Dockerfile"}
    kind = [a for a in build if a[:3] == ["kind", "load", "docker-image"]]
    minikube = [a[-1] for a in build if a[:3] == ["minikube", "image", "load"]]
    assert len(kind) == 1 and set(kind[0][3:]) == set(built.values())
    assert set(minikube) == set(built.values())

    (install, *_) = [a for a in _commands(_block_after("### 1. Install the operator (Helm)"), variables)
                     if a[:2] == ["helm", "install"]]
    release, chart = install[2], install[3]
    assert chart == "charts/mlflow-operator"
    options = install[4:]
    flags = [w for i, w in enumerate(options) if w == "--set" or (i and options[i - 1] == "--set")]
    assert flags, "the helm install line sets no image"
    rendered = h.helm("template", release, str(h.ROOT / chart), "--namespace", "mlflow-operator",
                      *flags).stdout
    (deployment,) = [o for o in yaml.safe_load_all(rendered) if o and o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == built["operator/Dockerfile"]
    assert container["imagePullPolicy"] == "IfNotPresent"  # the loaded image is used as is
    assert f"--default-server-image={built['plugin/Dockerfile']}" in container["args"]
    assert not built["plugin/Dockerfile"].endswith(":latest")  # latest would mean Always
