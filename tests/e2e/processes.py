"""Container processes of a ``PodPlan``: start, run to completion, probe, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.kubelet import PodError, PodPlan, Prepared


@dataclass
class Running:
    """A started container process; its own process group so workers die with it."""

    prepared: Prepared
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        port = next(iter(self.prepared.ports.values()))
        return f"http://127.0.0.1:{port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
        # uvicorn workers may linger in the group for a moment after the parent exits
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start(prepared: Prepared, log_path: Path) -> Running:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            prepared.argv,
            env=prepared.env,
            cwd=prepared.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Running(prepared, proc, log_path)


def _log_path(logs: Path, prepared: Prepared) -> Path:
    return logs / f"{prepared.namespace}.{prepared.pod}.{prepared.container}.log"


def run_to_completion(prepared: Prepared, log_path: Path, timeout: float) -> tuple[int, str]:
    running = start(prepared, log_path)
    try:
        code = running.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        running.stop()
        raise PodError(f"pod {prepared.pod} did not finish within {timeout:.0f}s:\n{running.log()[-4000:]}")
    running.stop()
    return code, running.log()


def run_init(plan: PodPlan, logs: Path, timeout: float) -> tuple[int, str]:
    """Run init containers in order; stop at the first failure (exit code, its log)."""
    for prepared in plan.init:
        code, log = run_to_completion(prepared, _log_path(logs, prepared), timeout)
        if code != 0:
            return code, log
    return 0, ""


def run_pod(plan: PodPlan, logs: Path, timeout: float) -> tuple[int, str]:
    """A Job's pod: init containers, then the (single) main container to completion."""
    code, log = run_init(plan, logs, timeout)
    if code != 0:
        return code, log
    if len(plan.main) != 1:
        raise PodError("only single-container Job pods are supported")
    return run_to_completion(plan.main[0], _log_path(logs, plan.main[0]), timeout)


def start_pod(plan: PodPlan, logs: Path, timeout: float) -> Running:
    """A Deployment's pod: init containers, then start the (single) main container."""
    code, log = run_init(plan, logs, timeout)
    if code != 0:
        raise PodError(f"init container of pod {plan.name} failed with {code}:\n{log[-4000:]}")
    if len(plan.main) != 1:
        raise PodError("only single-container server pods are supported")
    return start(plan.main[0], _log_path(logs, plan.main[0]))


def wait_ready(running: Running, timeout: float) -> None:
    """Poll the container's readinessProbe (httpGet) like a kubelet; fail fast if it exits."""
    probe = running.prepared.readiness or {}
    http = probe.get("httpGet")
    if http is None:
        raise PodError("only httpGet readiness probes are supported")
    url = f"http://127.0.0.1:{running.prepared.local_port(http['port'])}{http.get('path', '/')}"
    headers = {h["name"]: h["value"] for h in http.get("httpHeaders", [])}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            raise PodError(f"pod {running.prepared.pod} exited with {running.proc.returncode}:\n{running.log()[-4000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as resp:
                if 200 <= resp.status < 400:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise PodError(f"pod {running.prepared.pod} not ready after {timeout:.0f}s:\n{running.log()[-4000:]}")
