"""`scripts/demo`: the whole product on a laptop, on a real Kubernetes control plane, step by step.

Starts etcd + kube-apiserver + kube-controller-manager v1.35 (tests.support.controlplane;
the first run on a machine builds them, about 5 minutes), installs the CRD, runs the
operator, applies examples/minimal.yaml; the real Job and Deployment controllers make the
pods and the process kubelet (tests/e2e/kubelet.py) runs them sandboxed; then
examples/training-job.yaml logs a run with nothing but its ServiceAccount token. Prints
the MLflow URL, how to log in, and kubectl commands that work against this cluster.
Keeps running (edit the MLflowServer and the controllers roll the server) until Ctrl-C.

    scripts/demo                  # until Ctrl-C
    scripts/demo --port 5000      # the MLflow UI on http://127.0.0.1:5000 (default: a free port)
    scripts/demo --keep           # keep the work folder (logs, kubeconfig, admin password)
    scripts/demo --exit-after-job # for tests/CI: exit 0 once the job logged its run

On exit (Ctrl-C, --exit-after-job or a failure) everything the demo started is stopped,
its work folder, which holds the admin password, is deleted unless --keep or --workdir
was given, and the last line printed starts with "stopped".
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.e2e.stack import Stack
from tests.support.crd import install_crd
from tests.support import controlplane
from tests.support.kubeapi import Kube

ROOT = Path(__file__).resolve().parents[2]
SERVER_FILE = ROOT / "examples" / "minimal.yaml"
JOB_FILE = ROOT / "examples" / "training-job.yaml"
OTHER_NS = "team-b"  # a second team, for trying the allowedNamespaces patch


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0

    def step(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {text}", flush=True)

    def info(self, text: str) -> None:
        print(f"      {text}", flush=True)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _check_port_free(parser: argparse.ArgumentParser, port: int) -> None:
    """Refuse a taken port before minutes of start-up, not after."""
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError as exc:
        why = "is in use by another program" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        parser.error(f"--port {port}: 127.0.0.1:{port} {why}; pick another port or leave --port out for a free one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n")[0])
    parser.add_argument("--exit-after-job", "--once", action="store_true",
                        help="exit once the sample job has logged its run (for tests)")
    parser.add_argument("--port", type=_port, default=0,
                        help="local port of the MLflow URL, http://127.0.0.1:PORT (default: a free port)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, kubeconfig, the admin password) on exit and"
                             " print its path; by default it is deleted")
    parser.add_argument("--workdir", type=Path,
                        help="where logs, volumes and kubeconfigs go; kept on exit (default: a new"
                             " temp folder, deleted on exit unless --keep)")
    args = parser.parse_args(argv)
    if args.port:
        _check_port_free(parser, args.port)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlflow-operator-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep or args.workdir is not None
    p = Progress(total=5)
    # Ctrl-C and `kill` both unwind the exit stack, which stops every process the demo
    # started (explicitly: a background shell would start us with SIGINT ignored).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    code = 1
    try:
        with contextlib.ExitStack() as cleanup:
            code = _run(args, workdir, p, cleanup)
    except KeyboardInterrupt:
        code = 0
    except Exception as exc:  # a failed step is explained, with where to look, not dumped
        print(f"\nFAILED at step {p.n}: {exc}", file=sys.stderr)
        if not keep:  # the logs say why: keep them rather than delete the evidence
            keep = True
            print("the work folder is kept for its logs", file=sys.stderr)
        print(f"logs: {workdir / 'logs'} and {workdir / 'control-plane'}", file=sys.stderr)
    # Everything the demo started is shut down by now (the exit stack has unwound).
    print(f"\nstopped: everything the demo started is shut down; {_leave(workdir, keep)}", flush=True)
    return code


def _leave(workdir: Path, keep: bool) -> str:
    """Keep or delete the work folder; says which, for the last line."""
    if keep:
        return f"kept {workdir} (it holds the admin password: delete it when done)"
    shutil.rmtree(workdir, ignore_errors=True)
    if workdir.exists():
        return f"could not delete all of {workdir} (it holds the admin password: delete it)"
    return f"deleted {workdir} (logs, kubeconfig and the admin password)"


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, workdir: Path, p: Progress, cleanup: contextlib.ExitStack) -> int:
    server = yaml.safe_load(SERVER_FILE.read_text())
    namespace, name = server["metadata"]["namespace"], server["metadata"]["name"]
    job = next(d for d in yaml.safe_load_all(JOB_FILE.read_text()) if d and d["kind"] == "Job")
    job_sa = job["spec"]["template"]["spec"]["serviceAccountName"]

    p.step("Starting a Kubernetes v1.35 control plane on 127.0.0.1 (etcd, kube-apiserver, kube-controller-manager)")
    _ensure_binaries(p)
    plane = controlplane.ControlPlane(workdir / "control-plane").start()
    cleanup.callback(plane.stop)
    admin = Kube.from_kubeconfig(plane.kubeconfig)
    p.info(f"API server: {plane.url} (ready in {plane.started_in:.0f} s); "
           f"kubectl apply -f {CRD_NAME}")
    install_crd(admin)
    for ns in (namespace, OTHER_NS):
        admin.create_namespace(ns)
    admin.create_service_account(OTHER_NS, job_sa)

    p.step(f"Starting the operator: mlflow-operator run --namespace {namespace} --namespace {OTHER_NS}")
    stack = Stack(admin, plane.kubeconfig, workdir, [namespace, OTHER_NS])
    stack.__enter__()
    # Unwound in reverse: the operator and the pods' processes first, then the API server
    # (the node's watches end with it instead of waiting for their timeout), then the node.
    cleanup.callback(stack.__exit__)
    cleanup.callback(plane.stop)
    cleanup.callback(stack.runner.close)
    cleanup.callback(stack.stop_operator)
    stack.start_operator([namespace, OTHER_NS])
    p.info(f"operator log: {stack.operator_log}; pods run on node {stack.node.name}, a local-process kubelet")

    p.step(f"kubectl apply -f {SERVER_FILE.relative_to(ROOT)}")
    stack.apply_file(SERVER_FILE)
    p.info("the operator renders config, Secrets, RBAC, a volume, a migration Job and a Deployment;")
    p.info("the Job and ReplicaSet controllers make pods, run here as sandboxed local processes:")
    status = _wait_ready_showing_pods(stack, namespace, name, p)
    p.info(f"status: phase={status.get('phase')} url={status.get('url')} audience={status.get('audience')}")

    p.step(f"kubectl apply -f {JOB_FILE.relative_to(ROOT)}   (a job with no password)")
    p.info(f"ServiceAccount {namespace}/{job_sa}, token projected with audience {status['audience']}, "
           "MLFLOW_TRACKING_AUTH=k8s-token")
    stack.apply_file(JOB_FILE)
    ok, log = stack.wait_job(namespace, job["metadata"]["name"])
    for line in log.strip().splitlines()[-3:]:
        p.info(f"job> {line}")
    if not ok:
        raise RuntimeError(f"the example job failed; see {workdir / 'logs'}")
    forward = cleanup.enter_context(stack.port_forward(namespace, name, 5000, args.port))
    password_file = _save_admin_password(admin, namespace, status, workdir)
    user = _mlflow_user(forward.url, password_file.read_text(), f"system:serviceaccount:{namespace}:{job_sa}")
    p.info(f"MLflow user {user['username']!r} (created at first login, admin={user['is_admin']})")

    p.step("MLflow is up")
    print(_summary(plane, forward.url, namespace, name, status, password_file, workdir), flush=True)
    if args.exit_after_job:
        return 0
    print("Running until Ctrl-C; edits to the MLflowServer are reconciled and roll the server.", flush=True)
    while True:
        stack.check_operator()
        time.sleep(1)


CRD_NAME = "crds/mlflowservers.yaml"


def _ensure_binaries(p: Progress) -> None:
    """scripts/demo built them already (via scripts/bootstrap); a direct run may not have."""
    if all((controlplane.BIN / b).exists() for b in ("etcd", "kube-apiserver", "kube-controller-manager")):
        return
    p.info("first run on this machine: building kube-apiserver, kube-controller-manager and etcd from source")
    p.info("(about 5 minutes on 2 cores, once per machine; later runs start in seconds)")
    done = threading.Event()
    started = time.monotonic()

    def heartbeat() -> None:
        while not done.wait(30):
            p.info(f"... still building ({time.monotonic() - started:.0f} s)")

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        subprocess.run([str(ROOT / "scripts" / "build-control-plane")], check=True)
    finally:
        done.set()


def _wait_ready_showing_pods(stack: Stack, namespace: str, name: str, p: Progress) -> dict[str, Any]:
    """Wait for Ready, printing each pod's phase as the controllers and the node move it."""
    seen: dict[str, str] = {}
    stop = threading.Event()

    def show() -> None:
        while not stop.wait(0.5):
            try:
                pods = stack.admin.list("v1/pods", namespace)
            except Exception:  # noqa: BLE001 - only a progress display
                continue
            for pod in pods:
                phase = (pod.get("status") or {}).get("phase", "Pending")
                if seen.get(pod["metadata"]["name"]) != phase:
                    seen[pod["metadata"]["name"]] = phase
                    p.info(f"pod {pod['metadata']['name']}: {phase}")

    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    try:
        return stack.wait_ready(namespace, name)
    finally:
        stop.set()
        thread.join(5)


def _summary(plane: controlplane.ControlPlane, url: str, namespace: str, name: str, status: dict[str, Any],
             password_file: Path, workdir: Path) -> str:
    audience = status["audience"]
    patch = f'{{"spec":{{"auth":{{"allowedNamespaces":["{namespace}","{OTHER_NS}"]}}}}}}'
    return f"""
      MLflow UI:  {url}      (what `kubectl port-forward svc/{name} 5000` gives you)
      log in as:  admin   password: in {password_file}
                  (from Secret {namespace}/{status.get('adminSecret')}; the operator generated it once)
      as a job:   MLFLOW_TRACKING_URI={status['url']} MLFLOW_TRACKING_AUTH=k8s-token
                  + a token projected with audience {audience}  (see {JOB_FILE.relative_to(ROOT)})
      from here:  export MLFLOW_TRACKING_URI={url} MLFLOW_TRACKING_USERNAME=admin
                  export MLFLOW_TRACKING_PASSWORD="$(cat {password_file})"
      kubectl:    export KUBECONFIG={plane.kubeconfig} PATH={ROOT / ".cache" / "bin"}:$PATH
        $ kubectl explain mlflowserver.spec.auth
        $ kubectl -n {namespace} get mlflow
        $ kubectl -n {namespace} get mlflow,deploy,job,pod,svc,secret,pvc
        $ kubectl -n {namespace} describe mlflow {name}
        $ kubectl -n {OTHER_NS} create token trainer --audience {audience}
        $ curl -s -o /dev/null -w '%{{http_code}}\\n' -H "Authorization: Bearer $(kubectl -n {OTHER_NS} create token trainer --audience {audience})" {url}/api/2.0/mlflow/experiments/search?max_results=1
        $ kubectl -n {namespace} patch mlflow {name} --type merge -p '{patch}'
                  (the operator re-renders, the Deployment controller replaces the pod; the
                  curl as {OTHER_NS}/trainer then answers 200 instead of 403)
      no kubelet: `kubectl logs` and `kubectl port-forward` need a kubelet; the pods' output is in
                  {workdir / 'logs'}/<namespace>.<pod>.<container>.log, and the MLflow UI above
                  is this demo's port-forward.
      files:      {workdir}  (logs/ has the operator, Job and server output; control-plane/ the cluster's;
                  deleted on exit unless --keep or --workdir)
"""


def _mlflow_user(url: str, admin_password: str, username: str) -> dict[str, Any]:
    """Ask MLflow, as its admin, for the user the job's token was mapped to."""
    session = requests.Session()
    session.trust_env = False  # straight to the local port-forward
    resp = session.get(f"{url}/api/2.0/mlflow/users/get", params={"username": username},
                       auth=("admin", admin_password), timeout=10)
    if resp.status_code != 200:
        raise RuntimeError(f"MLflow has no user {username} (HTTP {resp.status_code})")
    return dict(resp.json()["user"])


def _save_admin_password(admin: Kube, namespace: str, status: dict[str, Any], workdir: Path) -> Path:
    secret = admin.get("v1/secrets", namespace, status["adminSecret"]) or {}
    password = base64.b64decode((secret.get("data") or {}).get("password", "")).decode()
    path = workdir / "admin-password"
    path.touch(mode=0o600)
    path.write_text(password)
    return path


if __name__ == "__main__":
    sys.exit(main())
