"""Operator benchmark: N MLflowServers created at once against the emulator.

`python -m bench.operator_bench [--quick]` (or via `python -m bench`). The real operator
process (`mlflow-operator run`) watches one namespace of the in-process emulator; the
benchmark plays the controllers the emulator lacks (Jobs finish, Deployments become
available) and measures:

- seconds until every object is reconciled (status written, migration Job created),
- seconds until every object is Ready (after the benchmark finished the Jobs and
  marked the Deployments available),
- API requests per object (everything the operator sent, watches and Events included),
  and the writes among them,
- requests per object in one steady-state resync (reads only, no writes expected),
- the operator's peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.operator.harness import CR, OperatorProcess, RecordingKube, server_manifest, wait_for

NS = "bench"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}
TARGETS = {"seconds_to_all_ready": "< 60", "operator_peak_rss_mb": "< 150"}


def _calls(kube: RecordingKube) -> tuple[int, int]:
    total = sum(kube.api_calls.values())
    writes = sum(n for (verb, _, _), n in kube.api_calls.items() if verb in WRITES)
    return total, writes


def _all(kube: RecordingKube, test) -> bool:
    items = kube.list(CR, NS)
    return bool(items) and all(test(item.get("status") or {}) for item in items)


def _reconciled(status: dict[str, Any]) -> bool:
    return status.get("observedGeneration") == 1 and bool((status.get("migration") or {}).get("job"))


def run(quick: bool = False) -> dict[str, Any]:
    count = 20 if quick else 200
    resync = 10.0 if quick else 30.0
    kube = RecordingKube().start()
    workdir = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    operator = OperatorProcess(kube, workdir, [NS], resync_seconds=resync)
    try:
        kube.create_namespace(NS)
        operator.start()
        calls0, writes0 = _calls(kube)
        cpu0, bench_cpu0 = operator.cpu_seconds(), time.process_time()
        started = time.monotonic()
        for i in range(count):
            kube.create(CR, server_manifest(f"s{i:03d}", NS))
        wait_for(lambda: _all(kube, _reconciled), timeout=300, what="all reconciled", interval=0.5)
        reconciled = time.monotonic() - started
        for item in kube.list(CR, NS):
            kube.mark_job_finished(NS, item["status"]["migration"]["job"])
        wait_for(lambda: len(kube.list("apps/v1/deployments", NS)) == count, timeout=300,
                 what="all Deployments", interval=0.5)
        for deployment in kube.list("apps/v1/deployments", NS):
            kube.mark_deployment_available(NS, deployment["metadata"]["name"])
        wait_for(lambda: _all(kube, lambda s: s.get("phase") == "Ready"), timeout=300,
                 what="all Ready", interval=0.5)
        ready = time.monotonic() - started
        calls1, writes1 = _calls(kube)
        # One full resync period with nothing to do: reads only.
        time.sleep(resync + 2)
        calls2, writes2 = _calls(kube)
        peak = operator.peak_rss_bytes()
        operator_cpu = operator.cpu_seconds() - cpu0
        emulator_cpu = time.process_time() - bench_cpu0
    finally:
        operator.stop()
        kube.stop()
    return {
        "objects": count,
        "seconds_to_all_reconciled": round(reconciled, 2),
        "seconds_to_all_ready": round(ready, 2),
        "requests_per_object": round((calls1 - calls0) / count, 1),
        "writes_per_object": round((writes1 - writes0) / count, 1),
        "steady_resync_requests_per_object": round((calls2 - calls1) / count, 1),
        "steady_resync_writes": writes2 - writes1,
        "operator_peak_rss_mb": round(peak / 2**20, 1),
        # Where the time went (2 shared cores): the operator vs the emulator + this driver.
        "operator_cpu_seconds": round(operator_cpu, 1),
        "emulator_and_driver_cpu_seconds": round(emulator_cpu, 1),
        "targets": TARGETS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 objects instead of 200")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
