"""The README's demo, end to end, the way a newcomer runs it (minus the bootstrap step)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_the_sample_job_and_prints_how_to_log_in(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.demo", "--exit-after-job", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    assert "MLflow UI:  http://127.0.0.1:" in out
    assert "job> logged run" in out
    assert "MLflow user 'system:serviceaccount:ml-team:trainer'" in out
    password_file = tmp_path / "admin-password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    # the password itself is never printed, only where to find it
    assert password_file.read_text() and password_file.read_text() not in out
