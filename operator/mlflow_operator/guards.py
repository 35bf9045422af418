"""Guard rails a platform engineer sets on the operator (`mlflow-operator run` flags).

An MLflowServer author chooses the server's image and may add volumes; the pods run
under a ServiceAccount the operator binds to `system:auth-delegator`. These rails limit
what the author can make the operator run, whatever RBAC lets them write:

* `--allowed-images REGEX ...`: `spec.image` must fully match one of them (unset: any);
* `hostPath` volumes are refused unless `--allow-host-path`.

A spec that breaks one is Degraded (`ImageNotAllowed`, `HostPathNotAllowed`) and nothing
is applied; what already runs keeps running. Pure: no I/O.
"""
from __future__ import annotations

import dataclasses
import re

from mlflow_operator.model import MLflowServerSpec, SpecError

IMAGES_FLAG = "--allowed-images"
HOST_PATH_FLAG = "--allow-host-path"


@dataclasses.dataclass(frozen=True)
class GuardRails:
    # Regexes a CR's spec.image must fully match; empty: every image is allowed.
    allowed_images: tuple[str, ...] = ()
    allow_host_path: bool = False

    def __post_init__(self) -> None:
        for pattern in self.allowed_images:
            compile_image_pattern(pattern)  # a bad pattern fails at start, not per CR

    def check(self, spec: MLflowServerSpec) -> None:
        """Raise SpecError naming the field and the flag when the spec crosses a rail."""
        if spec.image is not None and self.allowed_images and not any(
                re.fullmatch(p, spec.image) for p in self.allowed_images):
            raise SpecError(
                "ImageNotAllowed",
                f"spec.image {spec.image!r} matches none of the images this operator allows"
                f" ({IMAGES_FLAG} {' '.join(self.allowed_images)}); use an allowed image or"
                f" leave spec.image unset for the operator's default")
        if not self.allow_host_path:
            for index, volume in enumerate(spec.server.extra_volumes):
                if (volume.model_extra or {}).get("hostPath") is not None:
                    raise SpecError(
                        "HostPathNotAllowed",
                        f"spec.server.extraVolumes[{index}] ({volume.name!r}) is a hostPath"
                        f" volume, which exposes the node's files to the server; this operator"
                        f" refuses them (started without {HOST_PATH_FLAG})")


def compile_image_pattern(pattern: str) -> re.Pattern[str]:
    """ValueError with the regex's own complaint for a pattern Python cannot compile."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
