"""`scripts/cluster up|down|env`: the control plane of tests.support.controlplane, kept
running between commands (its processes outlive `up`; `down` reads their pids back)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import controlplane

DIRECTORY = Path(os.environ.get("MLFLOW_OPERATOR_CLUSTER_DIR", controlplane.ROOT / ".cache" / "cluster"))
USAGE = "usage: scripts/cluster up|down|env"


def up() -> int:
    if controlplane.load_state(DIRECTORY):
        print(f"cluster: already up ({DIRECTORY / 'admin.kubeconfig'})")
        return 0
    controlplane.stop_from_state(DIRECTORY)  # leftovers of a half-dead one
    subprocess.run([str(controlplane.ROOT / "scripts" / "build-control-plane")], check=True)
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    plane = controlplane.ControlPlane(DIRECTORY, die_with_parent=False).start()
    print(f"cluster: up in {plane.started_in:.1f} s at {plane.url}")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def down() -> int:
    print("cluster: stopped" if controlplane.stop_from_state(DIRECTORY) else "cluster: not running")
    return 0


def env() -> int:
    if not controlplane.load_state(DIRECTORY):
        print("cluster: not running; start it with scripts/cluster up", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={DIRECTORY / 'admin.kubeconfig'}")
    return 0


def main(argv: list[str]) -> int:
    commands = {"up": up, "down": down, "env": env}
    if len(argv) != 1 or argv[0] not in commands:
        print(USAGE, file=sys.stderr)
        return 2
    return commands[argv[0]]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
