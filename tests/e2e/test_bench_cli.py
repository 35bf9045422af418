"""`python -m bench` output: targets are judged, a failing suite is reported (exit code 1)."""

from __future__ import annotations

from bench.__main__ import main, render_table


def test_table_judges_targets_and_reports_failures() -> None:
    table = render_table({
        "plugin": ({"ratio": 0.5, "hit_us": 3.0, "targets": {"ratio": ">= 0.9", "hit_us": "< 20"}}, None, 1.0),
        "operator": (None, "RuntimeError: emulator down", 0.0),
    })
    assert "(target >= 0.9: MISSED)" in table
    assert "(target < 20: met)" in table
    assert "FAILED" in table and "emulator down" in table


def test_unknown_suite_module_fails_with_exit_code_1(monkeypatch, capsys) -> None:
    import bench.__main__ as cli

    monkeypatch.setitem(cli.SUITES, "plugin", "bench.does_not_exist")
    assert main(["--only", "plugin"]) == 1
    assert "No module named 'bench.does_not_exist'" in capsys.readouterr().out
