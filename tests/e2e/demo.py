"""`scripts/demo`: the whole product on a laptop with no cluster, step by step.

Starts the Kubernetes API emulator and the operator, applies examples/minimal.yaml, plays
the cluster for what the operator renders (migration Job, then the server Deployment; see
tests/e2e/kubelet.py for what is remapped), runs examples/training-job.yaml (nothing but
its ServiceAccount token), and prints the MLflow URL and how to log in. Keeps running
(and keeps reconciling: edit the MLflowServer and the server restarts) until Ctrl-C.

    scripts/demo                  # until Ctrl-C
    scripts/demo --exit-after-job # for tests/CI: exit 0 once the job logged its run
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.emulator import EmulatorThread
from tests.e2e.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
SERVER_FILE = ROOT / "examples" / "minimal.yaml"
JOB_FILE = ROOT / "examples" / "training-job.yaml"


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
    p = Progress(total=5)
    # Ctrl-C and `kill` both unwind the context managers, which stop every process the
    # demo started (explicitly: a background shell would start us with SIGINT ignored).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        return _run(args, workdir, p)
    except KeyboardInterrupt:
        print("\nstopped; everything the demo started is shut down.", flush=True)
        return 0
    except Exception as exc:  # a failed step is explained, with where to look, not dumped
        print(f"\nFAILED at step {p.n}: {exc}", file=sys.stderr)
        print(f"logs: {workdir / 'logs'}", file=sys.stderr)
        return 1


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, workdir: Path, p: Progress) -> int:
    server_manifest = yaml.safe_load(SERVER_FILE.read_text())
    namespace, name = server_manifest["metadata"]["namespace"], server_manifest["metadata"]["name"]
    job = next(d for d in yaml.safe_load_all(JOB_FILE.read_text()) if d and d["kind"] == "Job")

    p.step("Starting a Kubernetes API server emulator (KMock) on 127.0.0.1")
    with EmulatorThread() as emulator, Stack(emulator.url, workdir, say=p.info) as stack:
        kubeconfig = workdir / "kubeconfig"
        emulator.write_kubeconfig(kubeconfig, namespace)
        p.info(f"API server: {emulator.url}")

        p.step(f"Starting the operator: mlflow-operator run --namespace {namespace}")
        stack.start_operator([namespace])
        p.info(f"operator log: {stack.operator_log}")

        p.step(f"kubectl apply -f {SERVER_FILE.relative_to(ROOT)}")
        stack.apply_file(SERVER_FILE)
        p.info("the operator renders config, Secrets, RBAC, a volume, a migration Job and a Deployment;")
        p.info("this harness runs that Job, then that Deployment, as local processes:")
        status, pod = stack.bring_up(namespace, name)
        p.info(f"status: phase={status.get('phase')} url={status.get('url')} audience={status.get('audience')}")

        p.step(f"kubectl apply -f {JOB_FILE.relative_to(ROOT)}   (a job with no password)")
        p.info(f"ServiceAccount {namespace}/{job['spec']['template']['spec']['serviceAccountName']}, token "
               f"projected with audience {status['audience']}, MLFLOW_TRACKING_AUTH=k8s-token")
        stack.apply_file(JOB_FILE)
        code, log = stack.cluster.run_job(namespace, job["metadata"]["name"])
        for line in log.strip().splitlines()[-3:]:
            p.info(f"job> {line}")
        if code != 0:
            raise RuntimeError(f"the example job failed with exit code {code}; see {workdir / 'logs'}")
        sa_user = f"system:serviceaccount:{namespace}:{job['spec']['template']['spec']['serviceAccountName']}"
        password_file = _save_admin_password(stack, namespace, status, workdir)
        user = _mlflow_user(pod.url, password_file.read_text(), sa_user)
        p.info(f"MLflow user {user['username']!r} (created at first login, admin={user['is_admin']})")

        p.step("MLflow is up")
        print(f"""
      MLflow UI:  {pod.url}      (what `kubectl port-forward svc/{name} 5000` gives you)
      log in as:  admin   password: in {password_file}
                  (from Secret {namespace}/{status.get('adminSecret')}; the operator generated it once)
      as a job:   MLFLOW_TRACKING_URI={status['url']} MLFLOW_TRACKING_AUTH=k8s-token
                  + a token projected with audience {status['audience']}  (see {JOB_FILE.relative_to(ROOT)})
      from here:  export MLFLOW_TRACKING_URI={pod.url} MLFLOW_TRACKING_USERNAME=admin
                  export MLFLOW_TRACKING_PASSWORD="$(cat {password_file})"
      kubectl:    export KUBECONFIG={kubeconfig} PATH={ROOT / ".cache" / "bin"}:$PATH
                  kubectl -n {namespace} get mlflow,deploy,job,svc,secret,pvc
                  kubectl -n {namespace} patch mlflow {name} --type merge \\
                    -p '{{"spec":{{"auth":{{"allowedNamespaces":["{namespace}","team-b"]}}}}}}'
                  (the operator re-renders; this demo restarts the server on the same URL)
      files:      {workdir}  (logs/ has the operator, Job and server output)
""", flush=True)
        if args.exit_after_job:
            return 0
        print("Running until Ctrl-C; edits to the MLflowServer are reconciled and roll the server.", flush=True)
        while True:
            stack.check_operator()
            stack.cluster.sync(namespace, p.info)
            time.sleep(1)


def _mlflow_user(url: str, admin_password: str, username: str) -> dict[str, Any]:
    """Ask MLflow, as its admin, for the user the job's token was mapped to."""
    import requests

    resp = requests.get(f"{url}/api/2.0/mlflow/users/get", params={"username": username},
                        auth=("admin", admin_password), timeout=10)
    if resp.status_code != 200:
        raise RuntimeError(f"MLflow has no user {username} (HTTP {resp.status_code})")
    return dict(resp.json()["user"])


def _save_admin_password(stack: Stack, namespace: str, status: dict[str, Any], workdir: Path) -> Path:
    import base64

    secret = stack.cluster.read_object("Secret", namespace, status["adminSecret"]) or {}
    password = base64.b64decode((secret.get("data") or {}).get("password", "")).decode()
    path = workdir / "admin-password"
    path.touch(mode=0o600)
    path.write_text(password)
    return path


if __name__ == "__main__":
    sys.exit(main())
