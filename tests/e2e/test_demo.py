"""The README's demo, end to end, the way a newcomer runs it (minus the bootstrap step):
its own control plane, the sample job, and every kubectl command it prints."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.e2e.demo", "--workdir", str(tmp_path), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_demo_runs_the_sample_job_and_prints_how_to_log_in(tmp_path: Path) -> None:
    proc = _demo(tmp_path, "--exit-after-job")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    assert "MLflow UI:  http://127.0.0.1:" in out
    assert "job> logged run" in out
    assert "MLflow user 'system:serviceaccount:ml-team:trainer'" in out
    password_file = tmp_path / "admin-password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    # the password itself is never printed, only where to find it
    assert password_file.read_text() and password_file.read_text() not in out


class Lines:
    """The demo's output, read in a thread so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, text: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return self.seen
        raise AssertionError(f"the demo never printed {text!r}:\n" + "\n".join(self.seen[-60:]))


def test_every_kubectl_command_the_demo_prints_works(tmp_path: Path) -> None:
    proc = _demo(tmp_path)
    try:
        lines = Lines(proc).until("Running until Ctrl-C", 400)
        export = next(line for line in lines if "export KUBECONFIG=" in line).split("export ", 1)[1]
        env = {**os.environ, **dict(kv.split("=", 1) for kv in export.split())}
        env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
        commands = [line.split("$ ", 1)[1] for line in lines if line.lstrip().startswith("$ ")]
        assert len(commands) == 7, commands

        def run(command: str, check: bool = True) -> str:
            done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0 or not check, f"{command}\n{done.stdout}\n{done.stderr}"
            return done.stdout

        explain, columns, listing, describe, token, before, patched = (run(c) for c in commands)
        assert "allowedNamespaces" in explain
        assert columns.split()[:5] == ["NAME", "READY", "REPLICAS", "AVAILABLE", "URL"]
        assert columns.splitlines()[1].split()[:2] == ["mlflow", "True"]
        assert "deployment.apps/mlflow" in listing and "job.batch/train-example" in listing
        assert "Ready" in describe and "Events:" in describe
        assert token.startswith("eyJ")
        assert before.strip() == "403"  # team-b is not allowed yet
        assert "patched" in patched
        curl = commands[5]
        deadline = time.monotonic() + 180
        # the new pod, with the new policy, takes over (while none is ready, connections are refused)
        while run(curl, check=False).strip() != "200":
            assert time.monotonic() < deadline, "team-b/trainer still refused after the patch"
            time.sleep(2)
        proc.send_signal(signal.SIGINT)
        proc.wait(90)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
