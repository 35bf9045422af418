"""The injection webhook's certificates rotate under load, on the real control plane.

The operator runs with lifetimes of seconds (serving certificate 12 s, CA 30 s), so in
well under a minute it renews its serving certificate (same CA), then its CA (the old one
stays in the caBundle until it expires, then leaves it), and finally starts over when its
Secret is emptied by hand. Meanwhile a labelled Pod is admitted (dry run) every quarter
second: every one of them must come back mutated, which only happens if kube-apiserver
reached the webhook over TLS with the caBundle the operator put in place.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from cryptography import x509

from mlflow_operator.webhook import certs
from mlflow_operator.webhook.keeper import ApiError, Keeper, WebhookApi, utcnow
from tests.conftest import unique_namespace
from tests.operator.harness import CR, server_manifest, wait_for
from tests.operator.webhook_harness import LABEL, InjectionOperator, bare_pod
from tests.support.controlplane import ControlPlane
from tests.support.faultproxy import FaultProxy
from tests.support.kubeapi import Kube

VALIDITY = ["--webhook-cert-validity=12s", "--webhook-ca-validity=30s"]


@pytest.fixture()
def hook(admin: Kube, crd: dict, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InjectionOperator]:
    ns = unique_namespace("rotate")
    operator = InjectionOperator(admin, proxy.url, tmp_path_factory.mktemp("rotate"), watch=[ns], scope=[ns],
                                 extra=VALIDITY)
    try:
        operator.start()
        admin.create(CR, server_manifest("mlflow", ns))
        operator.ns = ns  # type: ignore[attr-defined]
        yield operator
    finally:
        operator.stop()
        # No traceback through the webhook's code. (The outage test also makes the
        # operator's reconcile log urllib3's connection-refused tracebacks: not the webhook's.)
        ours = [line[:2000] for line in operator.log().splitlines()
                if "Traceback" in line and "mlflow_operator/webhook/" in line]
        assert ours == [], ours


@dataclass
class Watch:
    """What a stream of admissions saw: outcomes, serving certificates, caBundles."""
    admitted: int = 0
    failed: list[str] = field(default_factory=list)
    serials: list[int] = field(default_factory=list)  # distinct serving certificates, in order
    issuers: dict[int, bytes] = field(default_factory=dict)  # serial -> issuer key id
    bundles: list[int] = field(default_factory=list)  # CA count of each distinct caBundle

    def admit(self, hook: InjectionOperator) -> None:
        try:
            pod = hook.dry_run_pod(hook.ns, bare_pod({LABEL: "mlflow"}))  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            self.failed.append(str(exc)[:300])
            return
        if any(v["name"] == "mlflow-operator-token" for v in pod["spec"].get("volumes") or []):
            self.admitted += 1
        else:
            self.failed.append("admitted without injection")

    def look(self, hook: InjectionOperator) -> None:
        cert = hook.served_certificate()
        if not self.serials or self.serials[-1] != cert.serial_number:
            self.serials.append(cert.serial_number)
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            self.issuers[cert.serial_number] = aki.key_identifier or b""
        count = hook.ca_count()
        if not self.bundles or self.bundles[-1] != count:
            self.bundles.append(count)

    def run(self, hook: InjectionOperator, until: callable, timeout: float) -> float:  # type: ignore[valid-type]
        start = time.monotonic()
        while not until(self):
            assert time.monotonic() - start < timeout, f"timed out: {self}"
            self.admit(hook)
            self.look(hook)
            time.sleep(0.25)
        return time.monotonic() - start


def _cas(hook: InjectionOperator) -> list[bytes]:
    secret = hook.admin.get("v1/secrets", hook.release, hook.secret["metadata"]["name"]) or {}
    data = secret.get("data") or {}
    return [base64.b64decode(data[k]) for k in ("ca.crt", "ca-previous.crt") if k in data]


def test_certificates_rotate_while_pods_keep_being_injected(hook: InjectionOperator, admin: Kube) -> None:
    seen = Watch()
    first_ca = _cas(hook)[0]
    # 1. The serving certificate is renewed (after 8 of its 12 s), by the same CA.
    took = seen.run(hook, lambda w: len(w.serials) >= 2, timeout=30)
    assert len(set(seen.issuers.values())) == 1 and _cas(hook)[0] == first_ca
    print(f"\nserving certificate renewed after {took:.1f} s; {seen.admitted} Pods injected so far")
    # 2. The CA is renewed (after 20 of its 30 s): for a while both CAs are trusted, and
    # the webhook serves a certificate of the new CA.
    took = seen.run(hook, lambda w: 2 in w.bundles and len(set(w.issuers.values())) >= 2, timeout=40)
    assert _cas(hook)[1] == first_ca, "the old CA is kept as ca-previous.crt"
    # 3. The old CA expires and leaves the caBundle: the API server trusts the new CA alone.
    took += seen.run(hook, lambda w: w.bundles[-1] == 1 and 2 in w.bundles and w.admitted >= 5 + len(w.serials),
                     timeout=30)
    print(f"CA renewed and the old one retired after {took:.1f} s more; caBundle CA counts {seen.bundles};"
          f" {len(seen.serials)} serving certificates; {seen.admitted} Pods injected, {len(seen.failed)} failed")
    assert seen.failed == []
    assert _cas(hook)[0] != first_ca


def test_an_emptied_secret_is_refilled_and_pods_are_still_injected(hook: InjectionOperator, admin: Kube) -> None:
    """A forced rotation: someone deletes the certificates. The operator issues a new CA at
    its next check, keeping the CA it serves with trusted until it expires."""
    seen = Watch()
    seen.run(hook, lambda w: w.admitted >= 3, timeout=20)
    old = _cas(hook)[0]
    name = hook.secret["metadata"]["name"]
    admin.request("PATCH", f"/api/v1/namespaces/{hook.release}/secrets/{name}", body={"data": None},
                  content_type="application/merge-patch+json")
    wait_for(lambda: _cas(hook) and _cas(hook)[0] != old, 15, "the operator to refill its Secret")
    assert _cas(hook)[1:] == [old], "the CA in use stays trusted (ca-previous.crt)"
    took = seen.run(hook, lambda w: len(set(w.issuers.values())) >= 2 and w.admitted >= 10, timeout=30)
    print(f"\nrefilled; new CA served after {took:.1f} s; {seen.admitted} Pods injected, {len(seen.failed)} failed")
    assert seen.failed == []


def test_an_api_outage_does_not_stop_the_webhook(hook: InjectionOperator, proxy: FaultProxy) -> None:
    """The API server unreachable for the operator through a few certificate checks (the
    fault proxy goes offline): the listener keeps serving, and renewals resume after."""
    seen = Watch()
    seen.run(hook, lambda w: w.admitted >= 2, timeout=20)
    with proxy.offline():
        time.sleep(5)
    assert "Webhook certificate check failed (still serving the current one)" in hook.log()
    took = seen.run(hook, lambda w: len(w.serials) >= 3 and w.admitted >= 10, timeout=40)
    print(f"\nafter the outage: {len(seen.serials)} serving certificates, {seen.admitted} Pods injected,"
          f" {len(seen.failed)} failed ({took:.1f} s)")
    assert seen.failed == []


def test_two_replicas_share_one_certificate(admin: Kube, control_plane: ControlPlane,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The Secret is written with its resourceVersion as a precondition: of two keepers
    (two replicas) that both saw it empty, the second write is refused by the API server
    (409), and that keeper adopts the first one's certificates instead of its own."""
    ns = unique_namespace("keepers")
    admin.create_namespace(ns)
    try:
        admin.create("v1/secrets", {"metadata": {"name": "tls"}, "type": "Opaque"}, ns)
        admin.create("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", {
            "metadata": {"name": ns}, "webhooks": [{
                "name": "inject.mlflow-operator.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "clientConfig": {"url": "https://127.0.0.1:1/inject"}, "rules": [],
                "objectSelector": {"matchLabels": {"never": ns}}}]})
        monkeypatch.setenv("KUBECONFIG", str(control_plane.kubeconfig))
        a, b = (Keeper(WebhookApi.from_environment(), ns, "tls", ns, ["127.0.0.1"], certs.Policy()) for _ in "ab")
        empty = admin.get("v1/secrets", ns, "tls")
        first = a.sync().bundle
        mine = certs.plan(None, ["127.0.0.1"], utcnow(), certs.Policy())
        with pytest.raises(ApiError) as refused:
            b._store(empty, mine)  # what b would write, from the empty Secret it read
        assert refused.value.status == 409
        assert b.sync().bundle == first  # it reads again and adopts
        hook = admin.get("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", None, ns)
        assert base64.b64decode(hook["webhooks"][0]["clientConfig"]["caBundle"]) == first.ca_cert
    finally:
        admin.delete("admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", None, ns)
        admin.delete("v1/namespaces", None, ns)
