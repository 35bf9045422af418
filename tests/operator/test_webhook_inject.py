"""The injection webhook's pure parts: the patch for a labelled Pod, what wins when the Pod
already says something, why a Pod is refused, and the certificates' renewal plan. (The
API server calling the webhook over TLS: test_webhook.py.)"""
from __future__ import annotations

import copy
import datetime

import jsonpatch
import pytest
from cryptography import x509

from mlflow_operator import cli
from mlflow_operator.webhook import certs
from mlflow_operator.webhook.inject import (
    TOKEN_DIR, TOKEN_PATH, VOLUME, Refused, Target, inject, parse_label, target_for)

TARGET = Target(url="http://mlflow.team.svc:5000", audience="https://mlflow.team.svc")
ENV = {"MLFLOW_TRACKING_URI": TARGET.url, "MLFLOW_TRACKING_AUTH": "k8s-token", "MLFLOW_K8S_TOKEN_PATH": TOKEN_PATH}
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _pod(*containers: dict, init: list[dict] | None = None, volumes: list[dict] | None = None) -> dict:
    spec: dict = {"containers": list(containers) or [{"name": "train", "image": "python"}]}
    if init is not None:
        spec["initContainers"] = init
    if volumes is not None:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team"}, "spec": spec}


def _apply(pod: dict) -> tuple[dict, list[str]]:
    result = inject(pod, TARGET)
    return jsonpatch.apply_patch(pod, result.ops), result.warnings


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def test_a_bare_pod_gets_volume_mount_and_variables_in_every_container() -> None:
    pod = _pod({"name": "train", "image": "python"}, {"name": "side", "image": "x", "env": [{"name": "A", "value": "1"}]},
               init=[{"name": "fetch", "image": "x"}])
    out, warnings = _apply(pod)
    assert warnings == []
    (volume,) = out["spec"]["volumes"]
    assert volume == {"name": VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "path": "token", "audience": TARGET.audience, "expirationSeconds": 3600}}]}}
    for container in out["spec"]["containers"] + out["spec"]["initContainers"]:
        assert {"name": VOLUME, "mountPath": TOKEN_DIR, "readOnly": True} in container["volumeMounts"]
        assert ENV.items() <= _env(container).items()
    assert _env(out["spec"]["containers"][1])["A"] == "1"


def test_values_already_in_the_pod_win() -> None:
    own = {"name": "train", "image": "python",
           "env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://elsewhere:5000"},
                   {"name": "MLFLOW_TRACKING_AUTH", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    out, _ = _apply(_pod(own))
    env = out["spec"]["containers"][0]["env"]
    assert env[:2] == own["env"]
    assert [e["name"] for e in env] == ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_AUTH", "MLFLOW_K8S_TOKEN_PATH"]


def test_a_container_with_its_own_token_mount_keeps_it() -> None:
    """examples/training-job.yaml plus the label: its hand-made volume and mount stay."""
    mine = {"name": "mlflow-token", "mountPath": TOKEN_DIR, "readOnly": True}
    other = {"name": "parent", "mountPath": "/var/run/secrets"}
    pod = _pod({"name": "a", "image": "x", "volumeMounts": [mine]}, {"name": "b", "image": "x", "volumeMounts": [other]},
               volumes=[{"name": "mlflow-token", "emptyDir": {}}, {"name": "parent", "emptyDir": {}}])
    out, warnings = _apply(pod)
    assert [c["volumeMounts"] for c in out["spec"]["containers"]] == [[mine], [other]]
    assert out["spec"]["volumes"] == pod["spec"]["volumes"]  # no unused volume added
    assert len(warnings) == 2 and "container a mounts " + TOKEN_DIR in warnings[0]


def test_a_taken_volume_name_is_not_reused() -> None:
    pod = _pod(volumes=[{"name": VOLUME, "emptyDir": {}}])
    out, _ = _apply(pod)
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert names == [VOLUME, f"{VOLUME}-1"]
    assert out["spec"]["containers"][0]["volumeMounts"][0]["name"] == f"{VOLUME}-1"


def test_injecting_twice_changes_nothing() -> None:
    once, _ = _apply(_pod(init=[{"name": "fetch", "image": "x"}]))
    again = inject(copy.deepcopy(once), TARGET)
    assert again.ops == [] and again.warnings == []


@pytest.mark.parametrize(("value", "expected"), [("mlflow", ("team", "mlflow")),
                                                 ("platform.mlflow", ("platform", "mlflow"))])
def test_label_values(value: str, expected: tuple[str, str]) -> None:
    assert parse_label(value, "team") == expected


@pytest.mark.parametrize("value", ["", "a.b.c", "Upper", "-x", "ns."])
def test_bad_label_values_are_refused_with_the_value(value: str) -> None:
    with pytest.raises(Refused, match="does not name an MLflowServer"):
        parse_label(value, "team")


def _server(spec: dict | None = None, ready: bool = True, **meta: str) -> dict:
    status = {"conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": "RollingOut"}]}
    return {"metadata": {"name": "mlflow", "namespace": "platform", "uid": "u", **meta},
            "spec": spec or {}, "status": status}


def test_target_is_the_in_cluster_url_and_audience() -> None:
    target, warnings = target_for(_server({"auth": {"allowedNamespaces": ["team"]}}), "team")
    assert target == Target("http://mlflow.platform.svc:5000", "https://mlflow.platform.svc")
    assert warnings == []
    _, warnings = target_for(_server(ready=False), "platform")
    assert warnings == ["MLflowServer platform/mlflow is not Ready (RollingOut): MLflow calls fail until it is"]


def test_refusals_name_the_server() -> None:
    with pytest.raises(Refused, match="MLflowServer platform/mlflow does not accept ServiceAccounts of namespace team"):
        target_for(_server(), "team")
    with pytest.raises(Refused, match="MLflowServer platform/mlflow is being deleted"):
        target_for(_server(deletionTimestamp="2026-01-01T00:00:00Z"), "platform")
    with pytest.raises(Refused, match="MLflowServer platform/mlflow has an invalid spec"):
        target_for(_server({"replicas": -1}), "platform")


# ---- certificates ----------------------------------------------------------------------

POLICY = certs.Policy(cert_validity=datetime.timedelta(days=90), ca_validity=datetime.timedelta(days=900))
HOSTS = ["op-webhook.ops.svc", "127.0.0.1"]


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_a_fresh_bundle_is_a_ca_and_a_serving_certificate_for_the_hosts() -> None:
    bundle = certs.plan(None, HOSTS, NOW, POLICY)
    cert = _cert(bundle.cert)
    cert.verify_directly_issued_by(_cert(bundle.ca_cert))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["op-webhook.ops.svc"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert bundle.ca_bundle(NOW) == bundle.ca_cert
    assert b"PRIVATE" not in repr(bundle).encode()
    assert certs.Bundle.from_data(bundle.to_data()) == bundle


def test_renewal_keeps_what_is_good_and_renews_what_is_due() -> None:
    bundle = certs.plan(None, HOSTS, NOW, POLICY)
    assert certs.plan(bundle, HOSTS, NOW + datetime.timedelta(days=59), POLICY) is bundle
    # Two thirds of the certificate's life gone: a new certificate, same CA (same caBundle).
    later = NOW + datetime.timedelta(days=61)
    renewed = certs.plan(bundle, HOSTS, later, POLICY)
    assert renewed.cert != bundle.cert and renewed.ca_cert == bundle.ca_cert
    assert renewed.ca_bundle(later) == bundle.ca_bundle(NOW)
    # Other host names: a new certificate at once.
    assert certs.plan(bundle, ["other.svc"], NOW, POLICY).cert != bundle.cert
    # Two thirds of the CA's life gone: a new CA, the old one still trusted until it expires.
    ca_due = NOW + datetime.timedelta(days=601)
    rotated = certs.plan(bundle, HOSTS, ca_due, POLICY)
    assert rotated.ca_cert != bundle.ca_cert and rotated.previous_ca == bundle.ca_cert
    assert rotated.ca_bundle(ca_due) == rotated.ca_cert + bundle.ca_cert
    assert rotated.ca_bundle(NOW + datetime.timedelta(days=901)) == rotated.ca_cert
    # ... and for ten minutes at most: by then every replica serves the new CA's certificate.
    assert rotated.ca_bundle(ca_due + datetime.timedelta(minutes=11)) == rotated.ca_cert
    _cert(rotated.cert).verify_directly_issued_by(_cert(rotated.ca_cert))


def test_a_certificate_never_outlives_its_ca() -> None:
    short = certs.Policy(cert_validity=datetime.timedelta(days=90), ca_validity=datetime.timedelta(days=30))
    bundle = certs.plan(None, HOSTS, NOW, short)
    assert _cert(bundle.cert).not_valid_after_utc <= _cert(bundle.ca_cert).not_valid_after_utc


def test_short_validities_renew_at_two_thirds() -> None:
    """The back-dated start (clock skew) does not count as life: 30 s renews after 20 s."""
    policy = certs.Policy(cert_validity=datetime.timedelta(seconds=30), ca_validity=datetime.timedelta(seconds=300))
    bundle = certs.plan(None, HOSTS, NOW, policy)
    assert certs.renew_at(bundle) == NOW + datetime.timedelta(seconds=20)
    assert certs.plan(bundle, HOSTS, NOW + datetime.timedelta(seconds=19), policy) is bundle
    assert certs.plan(bundle, HOSTS, NOW + datetime.timedelta(seconds=21), policy).cert != bundle.cert


def test_an_unreadable_secret_starts_over() -> None:
    broken = certs.Bundle(b"junk", b"junk", b"junk", b"junk")
    fresh = certs.plan(broken, HOSTS, NOW, POLICY)
    assert fresh.ca_cert.startswith(b"-----BEGIN CERTIFICATE-----") and fresh.previous_ca == b""


def test_a_forced_rotation_renews_everything_and_keeps_the_old_ca_for_a_while() -> None:
    bundle = certs.plan(None, HOSTS, NOW, POLICY)
    forced = certs.plan(bundle, HOSTS, NOW, POLICY, force=True)
    assert forced.ca_cert != bundle.ca_cert and forced.cert != bundle.cert
    assert forced.previous_ca == bundle.ca_cert
    assert forced.ca_bundle(NOW) == forced.ca_cert + bundle.ca_cert


# ---- command line ----------------------------------------------------------------------

def test_webhook_flags_are_all_or_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--webhook-configuration", "hook", "--webhook-secret", "ops/tls",
                              "--webhook-host", "svc.ops.svc", "--webhook-cert-validity", "12h"])
    from mlflow_operator.webhook.options import from_args

    options = from_args(args)
    assert options is not None and options.secret_namespace == "ops" and options.hosts == ("svc.ops.svc",)
    assert options.cert_validity == datetime.timedelta(hours=12) and options.port == 9443
    assert from_args(parser.parse_args(["run"])) is None
    assert cli.main(["run", "--webhook-configuration", "hook"]) == 2
    assert "the webhook needs all of --webhook-configuration, --webhook-secret and --webhook-host" \
        in capsys.readouterr().err
    for bad in (["--webhook-cert-validity", "90 days"], ["--webhook-secret", "no-namespace"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["run", *bad])
