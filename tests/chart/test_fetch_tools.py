"""scripts/fetch-k8s-tools: idempotent, fast on re-run, the versions DESIGN.md names."""
from __future__ import annotations

import subprocess
import time

from tests.chart import helm as h

SCRIPT = h.ROOT / "scripts" / "fetch-k8s-tools"


def test_rerun_is_fast_and_reports_helm4_and_kubectl135() -> None:
    h.require(h.HELM), h.require(h.KUBECTL)
    before = {p: p.stat().st_mtime_ns for p in (h.HELM, h.KUBECTL)}
    started = time.monotonic()
    out = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=120, check=True).stdout
    elapsed = time.monotonic() - started
    assert "helm: v4." in out and "kubectl: Client Version: v1.35." in out
    assert elapsed < 10, f"re-run took {elapsed:.1f}s: the binaries should have been kept"
    assert {p: p.stat().st_mtime_ns for p in before} == before  # not rewritten
    for binary in (h.HELM, h.KUBECTL):
        assert binary.stat().st_mode & 0o111
