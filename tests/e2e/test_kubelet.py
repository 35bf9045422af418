"""The kubelet harness on what the operator really renders (render_all), stored in the emulator."""

from __future__ import annotations

import configparser
import secrets
from pathlib import Path

from mlflow_operator.model import GeneratedSecrets, ServerRef, parse_spec
from mlflow_operator.render import render_all

from tests.e2e.cluster import LocalCluster
from tests.support.kube import KubeEmulator

PLURALS = {"Secret": "secrets", "ConfigMap": "configmaps", "ServiceAccount": "serviceaccounts",
           "Service": "services", "PersistentVolumeClaim": "persistentvolumeclaims"}


def _store(kube: KubeEmulator, ns: str, spec: dict) -> dict[str, dict]:
    ref = ServerRef(name="mlflow", namespace=ns, uid="u-1")
    generated = GeneratedSecrets(flask_secret_key=secrets.token_hex(16), admin_password=secrets.token_hex(12))
    objects = {}
    for obj in render_all(ref, parse_spec(spec), generated):
        objects[obj["kind"]] = obj
        if obj["kind"] in PLURALS:
            kube.create(f"v1/{PLURALS[obj['kind']]}", obj, namespace=ns)
    return objects


def test_rendered_server_pod_is_materialised_with_remapped_paths_ports_and_secrets(
    kube: KubeEmulator, tmp_path: Path,
) -> None:
    objects = _store(kube, "team-a", {})
    cluster = LocalCluster(kube.url, tmp_path)
    template = objects["Deployment"]["spec"]["template"]
    plan = cluster.kubelet.prepare("mlflow-x", "team-a", template["spec"], template["metadata"])
    (server,) = plan.main
    local_port = server.local_port("http")
    assert server.argv[:4] == ["mlflow", "server", "--app-name", "k8s-auth"]
    assert server.argv[server.argv.index("--port") + 1] == str(local_port)
    assert server.argv[server.argv.index("--host") + 1] == "127.0.0.1"
    data = server.argv[server.argv.index("--artifacts-destination") + 1]
    assert data.startswith(str(tmp_path)) and data.endswith("/data/artifacts")
    # env from secretKeyRef, with the sqlite path on the (shared, per-claim) PVC remapped
    assert server.env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{plan.pod_dir}/rootfs/mlflow/data/mlflow.db"
    assert server.env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert server.env["HOME"] == f"{plan.pod_dir}/rootfs/mlflow/tmp"
    assert Path(server.env["KUBECONFIG"]).is_file()
    # the ini from the config Secret, mounted read-only, names the remapped auth DB
    ini = configparser.ConfigParser()
    ini.read(server.env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini["mlflow"]["database_uri"] == f"sqlite:///{plan.pod_dir}/rootfs/mlflow/data/auth.db"
    assert ini["mlflow"]["authorization_function"] == "mlflow_k8s_auth.authn:authenticate_request"
    assert Path(server.env["MLFLOW_AUTH_CONFIG_PATH"]).stat().st_mode & 0o777 == 0o440
    assert (Path(server.cwd) / "..").resolve().exists()


def test_rendered_migration_job_runs_init_container_then_auth_upgrade(kube: KubeEmulator, tmp_path: Path) -> None:
    objects = _store(kube, "team-a", {})
    cluster = LocalCluster(kube.url, tmp_path)
    template = objects["Job"]["spec"]["template"]
    plan = cluster.kubelet.prepare("migrate-x", "team-a", template["spec"], template["metadata"])
    assert [p.container for p in plan.init] == ["migrate-tracking"]
    assert plan.init[0].argv[:3] == ["mlflow", "db", "upgrade"]
    # $(VAR) expanded from the Secret, then remapped onto the claim's directory
    assert plan.init[0].argv[3] == f"sqlite:///{plan.pod_dir}/rootfs/migrate-tracking/data/mlflow.db"
    assert plan.main[0].argv[-1] == f"sqlite:///{plan.pod_dir}/rootfs/migrate-auth/data/auth.db"
    # both containers see the same claim directory
    a = Path(plan.init[0].argv[3].removeprefix("sqlite:///")).parent.resolve()
    b = Path(plan.main[0].argv[-1].removeprefix("sqlite:///")).parent.resolve()
    assert a == b == (tmp_path / "pvc" / "team-a" / "mlflow-data").resolve()


def test_job_pod_gets_a_projected_token_with_the_requested_audience(kube: KubeEmulator, tmp_path: Path) -> None:
    import jwt
    import pytest

    from tests.e2e import sample_job
    from tests.e2e.kubelet import PodError

    cluster = LocalCluster(kube.url, tmp_path)
    configmap, job = sample_job.job_objects(name="train", namespace="team-a", service_account_name="trainer",
                                            tracking_uri="http://mlflow.team-a.svc:5000", audience="https://aud")
    kube.create("v1/configmaps", configmap, namespace="team-a")
    spec = job["spec"]["template"]["spec"]
    with pytest.raises(PodError, match="ServiceAccount team-a/trainer not found"):
        cluster.kubelet.prepare("train-x", "team-a", spec)
    uid = kube.create_service_account("team-a", "trainer")
    (ctr,) = cluster.kubelet.prepare("train-x", "team-a", spec).main
    claims = jwt.decode(Path(ctr.env["MLFLOW_K8S_TOKEN_PATH"]).read_text(), options={"verify_signature": False})
    assert claims["aud"] == ["https://aud"]
    assert claims["sub"] == "system:serviceaccount:team-a:trainer"
    assert claims["kubernetes.io"]["serviceaccount"]["uid"] == uid
    assert ctr.argv == ["python", str(Path(ctr.pod_dir) / "rootfs/train/app/train.py")]
    # rule 1 covers file contents too: the script's own mention of /app/train.py is remapped
    assert Path(ctr.argv[1]).read_text() == sample_job.SCRIPT.read_text().replace("/app/train.py", ctr.argv[1])
    assert ctr.env["MLFLOW_TRACKING_URI"] == "http://mlflow.team-a.svc:5000"  # untouched: DNS is rule 5


def test_missing_secret_key_is_a_clear_pod_error(kube: KubeEmulator, tmp_path: Path) -> None:
    import pytest

    from tests.e2e.kubelet import PodError

    objects = _store(kube, "team-a", {})
    kube.delete("v1/secrets", "team-a", "mlflow-admin")
    template = objects["Deployment"]["spec"]["template"]
    with pytest.raises(PodError, match="Secret team-a/mlflow-admin not found"):
        LocalCluster(kube.url, tmp_path).kubelet.prepare("mlflow-x", "team-a", template["spec"])
