"""`scripts/demo`: the whole product on a laptop with no cluster, step by step.

Starts the Kubernetes API emulator, the operator, applies an MLflowServer, plays the
cluster for what the operator renders (migration Job, then the server Deployment; see
tests/e2e/kubelet.py for what is remapped), runs the sample training job with nothing
but its ServiceAccount token, and prints the MLflow URL and how to log in. Keeps running
(and keeps reconciling: edit the MLflowServer and the server restarts) until Ctrl-C.

    scripts/demo                  # until Ctrl-C
    scripts/demo --exit-after-job # for tests/CI: exit 0 once the job logged its run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.emulator import EmulatorThread
from tests.e2e.stack import Stack

NAMESPACE = "team-a"
SERVER = "mlflow"
TRAINER = "trainer"
SPEC: dict[str, Any] = {
    # a ServiceAccount that may manage permissions with the k8s-auth app client
    "auth": {"adminServiceAccounts": [f"{NAMESPACE}:admin-bot"]},
}


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.started = total, 0, time.monotonic()

    def step(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {text}", flush=True)

    def info(self, text: str) -> None:
        print(f"      {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n")[0])
    parser.add_argument("--exit-after-job", "--once", action="store_true",
                        help="exit once the sample job has logged its run (for tests)")
    parser.add_argument("--workdir", type=Path, help="where logs, volumes and kubeconfigs go (default: a new temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlflow-operator-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    p = Progress(total=6)
    try:
        return _run(args, workdir, p)
    except KeyboardInterrupt:
        print("\nstopped (Ctrl-C); everything the demo started is shut down.", flush=True)
        return 0
    except Exception as exc:  # a failed step is explained, with where to look, not dumped
        print(f"\nFAILED at step {p.n}: {exc}", file=sys.stderr)
        print(f"logs: {workdir / 'logs'}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, workdir: Path, p: Progress) -> int:
    p.step("Starting a Kubernetes API server emulator (KMock) on 127.0.0.1")
    with EmulatorThread() as emulator, Stack(emulator.url, workdir, say=p.info) as stack:
        kubeconfig = workdir / "kubeconfig"
        emulator.write_kubeconfig(kubeconfig)
        p.info(f"API server: {emulator.url}   (kubectl --kubeconfig {kubeconfig} --validate=false ...)")

        p.step(f"Starting the operator: mlflow-operator run --namespace {NAMESPACE}")
        stack.start_operator([NAMESPACE])
        p.info(f"operator log: {stack.operator_log}")

        p.step(f"Applying MLflowServer {NAMESPACE}/{SERVER}")
        manifest = {"apiVersion": "mlflow-operator.dev/v1alpha1", "kind": "MLflowServer",
                    "metadata": {"name": SERVER, "namespace": NAMESPACE}, "spec": SPEC}
        for line in yaml.safe_dump(manifest, sort_keys=False).splitlines():
            p.info(line)
        stack.apply_server(NAMESPACE, SERVER, SPEC)

        p.step("Operator renders; running its migration Job, then its Deployment (as local processes)")
        status, pod = stack.bring_up(NAMESPACE, SERVER)
        p.info(f"status: phase={status.get('phase')} url={status.get('url')} audience={status.get('audience')}")

        p.step(f"Running the sample training job as ServiceAccount {NAMESPACE}/{TRAINER} (no password)")
        p.info(f"its token is projected with audience {status['audience']}; MLFLOW_TRACKING_AUTH=k8s-token")
        verdict = stack.run_job(NAMESPACE, "sample-train", service_account=TRAINER,
                                tracking_uri=status["url"], audience=status["audience"])
        if not verdict.get("ok"):
            raise RuntimeError(f"the sample job failed: {verdict}")
        p.info(f"logged run {verdict['run_id']} (params, a loss curve, an artifact) and read it back")

        p.step("MLflow is up")
        password_file = _save_admin_password(stack, status, workdir)
        print(f"""
      MLflow UI:  {pod.url}
      log in as:  admin   password: in {password_file}
                  (from Secret {NAMESPACE}/{status.get('adminSecret')}; the operator generated it once)
      as a job:   jobs in namespace {NAMESPACE} log with their ServiceAccount token:
                  MLFLOW_TRACKING_URI={status['url']} MLFLOW_TRACKING_AUTH=k8s-token
      from here:  export MLFLOW_TRACKING_URI={pod.url} MLFLOW_TRACKING_USERNAME=admin \\
                         MLFLOW_TRACKING_PASSWORD="$(cat {password_file})"
      files:      {workdir}  (logs/ has the operator, Job and server output)
""", flush=True)
        if args.exit_after_job:
            return 0
        print("Running until Ctrl-C; changes to the MLflowServer are reconciled and roll the server.", flush=True)
        while True:
            stack.check_operator()
            stack.cluster.sync(NAMESPACE, p.info)
            time.sleep(1)


def _save_admin_password(stack: Stack, status: dict[str, Any], workdir: Path) -> Path:
    import base64

    secret = stack.cluster.read_object("Secret", NAMESPACE, status["adminSecret"]) or {}
    password = base64.b64decode((secret.get("data") or {}).get("password", "")).decode()
    path = workdir / "admin-password"
    path.touch(mode=0o600)
    path.write_text(password)
    return path


if __name__ == "__main__":
    sys.exit(main())
