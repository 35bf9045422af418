"""Pure parts of the plugin: header parsing, JWT pre-check and the review cache.

The bad tokens are forged (tests.support.tokens: the attacker); the valid one is real."""

from __future__ import annotations

from collections.abc import Callable

import base64
import threading
import time

import pytest

from mlflow_k8s_auth.cache import ReviewCache
from mlflow_k8s_auth.credentials import Basic, Bearer, Malformed, extract, parse_authorization
from mlflow_k8s_auth.outcomes import Invalid, Reviewed, Unavailable
from mlflow_k8s_auth.precheck import Claims, Rejected, precheck, split_service_account
from tests.support.controlplane import ControlPlane
from tests.support.kubeapi import Kube
from tests.support.tokens import mint_alg_none_token, mint_token

AUD = ("mlflow",)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TestCredentials:
    def test_bearer_and_basic(self) -> None:
        assert parse_authorization("Bearer abc.def.ghi") == Bearer("abc.def.ghi")
        assert parse_authorization("bearer  tok ") == Bearer("tok")
        assert parse_authorization(basic("alice", "pa:ss")) == Basic("alice", "pa:ss")
        assert parse_authorization(None) is None

    @pytest.mark.parametrize(
        "value",
        ["Bearer", "Bearer a b", "Token abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
         "Basic " + base64.b64encode(b"\xff:\xfe").decode(), "Bearer t\u00e9st", "Bearer " + "a" * 70000],
    )
    def test_malformed(self, value: str) -> None:
        assert isinstance(parse_authorization(value), Malformed)

    def test_repr_hides_secrets(self) -> None:
        assert "secret" not in repr(Bearer("secret")) + repr(Basic("u", "secret"))

    def test_gateway_header_preferred_on_gateway_routes(self) -> None:
        headers = {"Authorization": "Bearer upstream-key", "X-MLflow-Authorization": "Bearer ours"}
        assert extract(headers, "/gateway/openai/v1/chat") == Bearer("ours")
        assert extract(headers, "/api/2.0/mlflow/experiments/get") == Bearer("upstream-key")
        assert extract({"Authorization": "Bearer upstream"}, "/gateway/x") == Bearer("upstream")


class TestPrecheck:
    def test_valid_token(self, admin: Kube, control_plane: ControlPlane, namespace: str) -> None:
        # A token as kube-apiserver issues it (TokenRequest), not one shaped by us.
        admin.create_service_account(namespace, "trainer")
        token = admin.token_for(namespace, "trainer", ["mlflow", "other"])
        claims = precheck(token, AUD, issuers=(control_plane.issuer,))
        assert isinstance(claims, Claims)
        assert claims.subject == f"system:serviceaccount:{namespace}:trainer"
        assert claims.audiences == ("mlflow", "other")
        assert time.time() + 3000 < claims.expires_at <= time.time() + 3600

    @pytest.mark.parametrize(
        ("make_token", "reason"),
        [
            (lambda: "garbage", "not a JWT"),
            (lambda: "a.b.c", "well-formed"),
            (lambda: mint_token("jobs", "t", ["mlflow"])[:300], "JWT"),
            # 41 characters off the 342 of an RS256 signature leave 301, a length no
            # base64url text can have (a cut of 40 still decodes now and then).
            (lambda: mint_token("jobs", "t", ["mlflow"])[:-41], "well-formed"),
            (lambda: mint_alg_none_token("jobs", "t", ["mlflow"]), "algorithm"),
            (lambda: mint_token("jobs", "t", ["mlflow"], alg="HS256", key=b"k" * 32), "algorithm"),
            (lambda: mint_token("jobs", "t", ["other"]), "audience"),
            (lambda: mint_token("jobs", "t", ["mlflow"], expires_in=-600), "expired"),
            (lambda: mint_token("jobs", "t", ["mlflow"], not_before=time.time() + 600), "not yet valid"),
            (lambda: mint_token("jobs", "t", ["mlflow"], extra_claims={"exp": None}), "no expiry"),
            (lambda: mint_token("jobs", "t", ["mlflow"], extra_claims={"sub": "alice"}), "not a ServiceAccount"),
            (lambda: mint_token("jobs", "t", ["mlflow"], extra_claims={"exp": "soon"}), "not a number"),
        ],
    )
    def test_rejections(self, make_token: Callable[[], str], reason: str) -> None:
        # Tokens are made when the test runs: a time-relative claim built at collection
        # would have aged by the time a long suite reaches it.
        result = precheck(make_token(), AUD)
        assert isinstance(result, Rejected)
        assert reason in result.reason

    def test_issuer_checked_when_configured(self) -> None:
        token = mint_token("jobs", "t", ["mlflow"], issuer="https://evil")
        assert isinstance(precheck(token, AUD), Claims)
        assert isinstance(precheck(token, AUD, issuers=("https://kubernetes.default.svc",)), Rejected)

    def test_small_skew_tolerated(self) -> None:
        assert isinstance(precheck(mint_token("jobs", "t", ["mlflow"], expires_in=-5), AUD), Claims)

    def test_split_service_account(self) -> None:
        assert split_service_account("system:serviceaccount:ns:sa") == ("ns", "sa")
        for bad in ("alice", "system:serviceaccount:ns", "system:serviceaccount::sa", "system:serviceaccount:a:b:c"):
            assert split_service_account(bad) is None


def reviewed(expires_in: float = 3600) -> Reviewed:
    return Reviewed("system:serviceaccount:a:b", "a", "b", time.time() + expires_in)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestReviewCache:
    def test_hit_after_review_and_expiry(self) -> None:
        clock = FakeClock()
        cache = ReviewCache(AUD, 10, 2, 100, clock=clock)
        key = cache.key("tok")
        calls = []
        outcome, cached = cache.get_or_review(key, lambda: calls.append(1) or reviewed())
        assert isinstance(outcome, Reviewed) and not cached
        assert cache.get_or_review(key, lambda: calls.append(1) or reviewed()) == (outcome, True)
        clock.now += 11
        cache.get_or_review(key, lambda: calls.append(1) or reviewed())
        assert len(calls) == 2

    def test_entry_never_outlives_token(self) -> None:
        clock = FakeClock()
        cache = ReviewCache(AUD, 120, 2, 100, clock=clock)
        key = cache.key("tok")
        cache.store(key, reviewed(expires_in=5))
        assert cache.lookup(key) is not None
        clock.now += 5
        assert cache.lookup(key) is None

    def test_negative_cached_briefly_unavailable_never(self) -> None:
        clock = FakeClock()
        cache = ReviewCache(AUD, 120, 2, 100, clock=clock)
        bad, down = cache.key("bad"), cache.key("down")
        cache.store(bad, Invalid("no"))
        cache.store(down, Unavailable("timeout"))
        assert cache.lookup(bad) == Invalid("no")
        assert cache.lookup(down) is None
        clock.now += 3
        assert cache.lookup(bad) is None

    def test_keys_are_hmac_and_depend_on_audiences(self) -> None:
        one, two = ReviewCache(AUD, 1, 1, 10), ReviewCache(("other",), 1, 1, 10)
        key = one.key("tok")
        assert len(key) == 32 and b"tok" not in key
        assert key != two.key("tok") and key == one.key("tok")

    def test_bounded(self) -> None:
        cache = ReviewCache(AUD, 120, 120, 8)
        for i in range(100):
            cache.store(cache.key(f"t{i}"), reviewed())
            cache.store(cache.key(f"n{i}"), Invalid("x"))
        assert len(cache._positive) <= 8 and len(cache._negative) <= 2

    def test_singleflight(self) -> None:
        cache = ReviewCache(AUD, 120, 2, 100)
        key = cache.key("tok")
        calls = []
        gate = threading.Event()

        def review() -> Reviewed:
            calls.append(1)
            gate.wait(5)
            return reviewed()

        results = []
        threads = [threading.Thread(target=lambda: results.append(cache.get_or_review(key, review))) for _ in range(32)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        gate.set()
        for thread in threads:
            thread.join(5)
        assert len(calls) == 1
        assert len(results) == 32 and all(isinstance(r[0], Reviewed) for r in results)

    def test_failed_review_releases_waiters(self) -> None:
        cache = ReviewCache(AUD, 120, 2, 100)
        key = cache.key("tok")
        with pytest.raises(RuntimeError):
            cache.get_or_review(key, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
        outcome, _ = cache.get_or_review(key, reviewed)
        assert isinstance(outcome, Reviewed)
