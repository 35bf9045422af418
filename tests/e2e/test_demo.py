"""The README's demo, end to end, the way a newcomer runs it (minus the bootstrap step):
its own control plane, the sample job, and every kubectl command it prints; its --port,
its last "stopped" line, and its work folder (which holds the admin password) deleted on
exit unless --keep."""

from __future__ import annotations

import os
import queue
import socket
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
    """The demo with its default work folder, made under `tmp_path` (TMPDIR)."""
    return subprocess.Popen([sys.executable, "-m", "tests.e2e.demo", *args], cwd=ROOT,
                            env={**os.environ, "TMPDIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def _work_folder(out: str) -> Path:
    line = next(line for line in out.splitlines() if line.strip().startswith("files:"))
    return Path(line.split("files:", 1)[1].split()[0])


def test_demo_runs_the_sample_job_and_prints_how_to_log_in(tmp_path: Path) -> None:
    port = _free_port()
    proc = _demo(tmp_path, "--exit-after-job", "--port", str(port), "--keep")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    assert f"MLflow UI:  http://127.0.0.1:{port} " in out
    assert "job> logged run" in out
    assert "MLflow user 'system:serviceaccount:ml-team:trainer'" in out
    workdir = _work_folder(out)
    assert workdir.parent == tmp_path
    # --keep: the last line says the demo stopped and where the kept folder is
    assert out.strip().splitlines()[-1] == (f"stopped: everything the demo started is shut down; kept {workdir}"
                                            " (it holds the admin password: delete it when done)")
    password_file = workdir / "admin-password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    # the password itself is never printed, only where to find it
    assert password_file.read_text() and password_file.read_text() not in out


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = _demo(tmp_path, "--port", str(port))
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert f"--port {port}: 127.0.0.1:{port} is in use by another program" in out
    assert "Traceback" not in out and "[1/5]" not in out
    assert list(tmp_path.iterdir()) == []  # no work folder made
    print(f"refused in {time.monotonic() - started:.1f} s")


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
        reader = Lines(proc)
        lines = list(reader.until("Running until Ctrl-C", 400))
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
        last = reader.until("stopped:", 30)[-1]
        workdir = _work_folder("\n".join(lines))
        # without --keep the folder with the admin password and kubeconfig is gone
        assert not workdir.exists()
        assert last == (f"stopped: everything the demo started is shut down; deleted {workdir}"
                        " (logs, kubeconfig and the admin password)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
