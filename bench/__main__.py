"""`python -m bench [--quick] [--only plugin|plugin-sar|operator] [--json]`.

Runs `bench.plugin_bench.run(quick)`, `bench.plugin_sar_bench.run(quick)` (Kubernetes
authorization with workspaces) and `bench.operator_bench.run(quick)` (each returns a
flat dict of measured numbers; a key ending in `_target` or a `targets` dict is shown next
to its value) and prints them in one table. A suite that fails is reported, not hidden:
the exit code is 1 if any suite failed to run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

SUITES = {
    "plugin": "bench.plugin_bench",
    "plugin-sar": "bench.plugin_sar_bench",
    "operator": "bench.operator_bench",
}


def _run_suite(module_name: str, quick: bool) -> tuple[dict[str, Any] | None, str | None, float]:
    started = time.perf_counter()
    try:
        module = importlib.import_module(module_name)
        result = module.run(quick=quick)
    except Exception as exc:  # a benchmark failure is reported, not raised
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return None, detail, time.perf_counter() - started
    if not isinstance(result, Mapping):
        return None, f"{module_name}.run() returned {type(result).__name__}, expected a dict", 0.0
    return dict(result), None, time.perf_counter() - started


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def _meets(value: Any, target: Any) -> bool | None:
    """Whether `value` meets a target like ">= 0.9", "< 20" or 1; None if not comparable."""
    match = re.fullmatch(r"\s*(>=|<=|>|<|==)?\s*(-?[\d.]+)\s*\S*", str(target))
    if match is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    op, bound = match.group(1) or "==", float(match.group(2))
    return {">=": value >= bound, "<=": value <= bound, ">": value > bound,
            "<": value < bound, "==": value == bound}[op]


def _rows(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    targets = dict(result.get("targets") or {})
    rows = []
    for key, value in result.items():
        if key == "targets" or key.endswith("_target"):
            continue
        target = targets.get(key, result.get(f"{key}_target", ""))
        verdict = {True: "met", False: "MISSED", None: ""}[_meets(value, target)] if target != "" else ""
        rows.append((key, _fmt(value), f"{_fmt(target)}{': ' + verdict if verdict else ''}" if target != "" else ""))
    return rows


def render_table(results: Mapping[str, tuple[dict[str, Any] | None, str | None, float]]) -> str:
    lines = []
    blocks = {}
    for suite, (result, error, seconds) in results.items():
        header = f"{suite} ({seconds:.1f} s)"
        blocks[suite] = (header, [("FAILED", error or "", "")] if result is None else _rows(result))
    width = max((len(k) for _, rows in blocks.values() for k, _, _ in rows), default=10)
    vwidth = max((len(v) for _, rows in blocks.values() for _, v, _ in rows if len(v) < 60), default=8)
    for header, rows in blocks.values():
        lines.append(header)
        lines.append("-" * len(header))
        for key, value, target in rows:
            suffix = f"   (target {target})" if target else ""
            lines.append(f"  {key:<{width}}  {value:>{vwidth}}{suffix}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke check, not a measurement)")
    parser.add_argument("--only", choices=sorted(SUITES), action="append", help="run only this suite")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    args = parser.parse_args(argv)
    results = {}
    for suite in args.only or list(SUITES):
        print(f"running {suite} benchmark{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        results[suite] = _run_suite(SUITES[suite], args.quick)
    if args.json:
        print(json.dumps({s: r if r is not None else {"error": e} for s, (r, e, _) in results.items()}, indent=2, default=str))
    else:
        print(render_table(results))
    return 1 if any(r is None for r, _, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
