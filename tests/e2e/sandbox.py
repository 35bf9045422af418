"""A container's securityContext and mounts, enforced by bubblewrap (``bwrap``).

Test support. There is no container runtime here, and the harness has no root
filesystem image to give a pod: the "image" is this machine (its Python venv). What a
runtime would enforce from the pod's manifest, Debian's ``bubblewrap`` enforces without
privileges, in a user namespace:

- **mounts at their real paths**: every volumeMount is bound at its ``mountPath``
  (read-only when ``readOnly``), so the process reads ``/etc/mlflow/auth.ini`` and
  writes ``sqlite:////data/mlflow.db`` exactly as rendered; nothing is rewritten;
- **readOnlyRootFilesystem**: the rest of the filesystem is this machine's, bound
  read-only; with ``readOnlyRootFilesystem: true`` the root itself is remounted
  read-only, so a write outside a writable volume fails with EROFS;
- **runAsUser / runAsGroup** (container over pod): the process runs as that uid and gid
  (``--uid/--gid`` in a new user namespace); ``runAsNonRoot`` with uid 0, or with no
  uid at all (the image's user is root), refuses to start, as kubelet does;
- **capabilities**: none (``--cap-drop ALL``: a non-root container user never gets any
  here; ``capabilities.add`` is refused rather than silently ignored);
- **allowPrivilegeEscalation: false**: bwrap always sets ``no_new_privs``;
- **pid namespace** of its own; the process dies with the harness (``--die-with-parent``).

Limits, by design: a user namespace maps one uid, the container's, onto the user
running the tests, so files of that user appear owned by the container user (volume
file modes such as a Secret's ``0440`` are kept, their owner is not); for the same
reason ``fsGroup`` and ``supplementalGroups`` are not applied, and ``seccompProfile`` is
not either (bwrap would need a compiled filter). The network is the
host's (pods reach each other and the API server on 127.0.0.1; ports are remapped, see
tests/e2e/kubelet.py). A mountPath that does not exist on this machine (``/data``,
``/etc/mlflow``) is made by giving its parent directory a fresh tmpfs that binds back
every existing entry of the real one; ``/tmp`` is an empty directory unless a volume is
mounted there, as in an image.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]
# Never bound from the host: given fresh by bwrap, or empty as in an image.
_FRESH = {"/proc", "/dev", "/tmp"}


class SecurityError(RuntimeError):
    """The pod's securityContext cannot be honoured (kubelet: CreateContainerConfigError)."""


@dataclass(frozen=True)
class Security:
    uid: int
    gid: int
    read_only_root: bool

    @classmethod
    def of(cls, pod_spec: Mapping[str, Any], container: Mapping[str, Any]) -> Security:
        """The effective securityContext: the container's fields override the pod's."""
        pod = pod_spec.get("securityContext") or {}
        ctr = container.get("securityContext") or {}

        def field(name: str) -> Any:
            return ctr[name] if name in ctr else pod.get(name)

        uid = field("runAsUser")
        if field("runAsNonRoot") and not uid:
            # The harness's image (this venv) has no USER: it would run as root.
            raise SecurityError(f"container {container['name']!r}: runAsNonRoot and the image runs as root")
        if (ctr.get("capabilities") or {}).get("add"):
            raise SecurityError(f"container {container['name']!r}: capabilities.add is not supported here")
        if ctr.get("privileged"):
            raise SecurityError(f"container {container['name']!r}: privileged containers are not supported here")
        uid = int(uid or 0)
        # Without runAsGroup a runtime uses the image's group for the user: root's here.
        gid = int(field("runAsGroup") or 0)
        return cls(uid=uid, gid=gid, read_only_root=bool(ctr.get("readOnlyRootFilesystem")))


@dataclass(frozen=True)
class Mount:
    path: str  # mountPath in the container
    source: Path  # on this machine
    read_only: bool


def bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SecurityError("bubblewrap is not installed (scripts/install-bwrap: apt-get install -y bubblewrap)")
    return path


def command(argv: list[str], security: Security, mounts: list[Mount], cwd: str) -> list[str]:
    """The bwrap command line that runs ``argv`` in the container's sandbox."""
    targets = [_resolve(m.path) for m in mounts]
    args = [bwrap(), "--unshare-user", "--unshare-pid", "--unshare-ipc", "--die-with-parent",
            "--uid", str(security.uid), "--gid", str(security.gid), "--cap-drop", "ALL"]
    args += _root(targets)
    for mount, target in zip(mounts, targets):
        args += ["--ro-bind" if mount.read_only else "--bind", str(mount.source), target]
    for path in _image_paths_hidden_by(["/tmp", *targets]):
        args += ["--ro-bind", path, path]
    if security.read_only_root:
        args += ["--remount-ro", "/"]
    return [*args, "--chdir", cwd, "--", *argv]


def _image_paths_hidden_by(mount_points: list[str]) -> list[str]:
    """The "image" (this repository and its venv, the Python it runs on) when it lives
    under a directory the pod gets fresh or from a volume, e.g. a clone in /tmp: bound
    back read-only on top, as an image's files would be there."""
    image = {str(REPOSITORY), sys.prefix, sys.base_prefix}
    return sorted(path for path in image
                  if any(path == point or path.startswith(point.rstrip("/") + "/") for point in mount_points))


def _resolve(path: str) -> str:
    """``/var/run/x`` -> ``/run/x``: symlinks of this machine's part of the path resolved
    (bwrap does not create a mountpoint through a symlink)."""
    parts = Path(path).parts
    for i in range(len(parts), 0, -1):
        prefix = Path(*parts[:i])
        if prefix.exists():
            return str(Path(os.path.realpath(prefix), *parts[i:]))
    return path


def _root(targets: list[str]) -> list[str]:
    """A tmpfs root that shows this machine's directories; every directory on the way to
    a mount target that lacks it is shadowed (tmpfs + its entries bound back)."""
    shadowed = {"/"}
    for target in targets:
        parent = Path(target).parent
        if not Path(target).exists():
            while not parent.exists():
                parent = parent.parent
            shadowed |= {str(parent), *(str(p) for p in parent.parents)}
    args: list[str] = []
    for directory in sorted(shadowed, key=lambda d: d.count("/") if d != "/" else 0):
        if directory != "/":
            args += ["--dir", directory]
        if directory in _FRESH:
            continue
        for entry in sorted(Path(directory).iterdir()):
            name = str(entry)
            if name in shadowed or name in _FRESH or name in targets:
                continue
            if entry.is_symlink():
                args += ["--symlink", os.readlink(entry), name]
            elif entry.is_dir() or entry.is_file():
                args += ["--ro-bind", name, name]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if "/tmp" not in targets:
        args += ["--dir", "/tmp"]
    return args
