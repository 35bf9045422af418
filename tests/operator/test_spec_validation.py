"""Specs the plugin would refuse are refused before a server crash-loops on them.

Three layers, one rule: the API server (CRD patterns and a CEL rule), the operator's model
(`parse_spec`), and the plugin's own loader run on every rendered ini. Shown here:
- property (hypothesis): every spec the model accepts renders an ini that the plugin's
  `load_config` and MLflow's `read_auth_config` read back to the spec's values;
- the real API server rejects exactly what the model rejects for these fields (every
  Unicode space, ',', a namespace listed twice), and the CEL rule fits its cost budget at
  256 entries;
- the values of the report (a space, '%', a no-break space, only ',', a namespace twice,
  an issuer with '%') on a running operator: objects stored under an older CRD that let
  them through become Degraded `InvalidSpec` naming the field, with a Warning Event, and
  no config Secret or Deployment; '%' is not refused but reaches the plugin verbatim;
- `mlflow-operator render` of such a file says the same, no traceback.
"""
from __future__ import annotations

import base64
import contextlib
import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.server.auth.config import read_auth_config

from mlflow_k8s_auth.config import ServiceAccountRef, load_config, parse_config
from mlflow_k8s_auth.db_uri import normalize as normalize_db_uri
from mlflow_operator import names
from mlflow_operator.model import PERMISSIONS, ServerRef, SpecError, StoreUris, parse_spec
from mlflow_operator.render import render_all, render_auth_ini
from mlflow_operator.render.config import TOKEN_VALIDATION
from mlflow_operator.render.ini_check import check_auth_ini
from tests.conftest import unique_namespace
from tests.operator.harness import chart_operator, server_manifest, wait_for
from tests.support.crd import CR, ServerCheck, crd_manifest, crd_namespace, install_crd
from tests.support.controlplane import ControlPlane
from tests.support.kubeapi import Kube
from tests.support.kubectl import Kubectl
from tests.support.node import SimulatedRunner
from tests.operator.test_render import GENERATED

REF = ServerRef("demo", "team-a", "uid-demo")
SPACES = [chr(i) for i in range(sys.maxunicode + 1) if chr(i).isspace()]
# Characters that break ini files or look like its syntax, and ones that must NOT be refused.
AWKWARD = [*SPACES, ",", "%", "%%", "%(x)s", ":", "=", "#", ";", "[", "]", "\\", "\u200b", "é", "\x00"]


# --- property: what the model accepts, the plugin reads back unchanged ---------------------

def _text(min_size: int = 0) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.sampled_from(AWKWARD), st.characters(codec="utf-8"),
                       st.sampled_from(["https://", "mlflow", ".svc", "/", "a", "0"]))
    inner = st.lists(pieces, min_size=min_size, max_size=8).map("".join)
    # Awkward characters at either end too: where an ini reader strips.
    edged = st.builds(lambda a, t, b: a + t + b, st.sampled_from(AWKWARD), inner, st.sampled_from(AWKWARD))
    return st.one_of(inner, edged)


NAMESPACE = st.sampled_from(["team-a", "team-b", "ml", "x1", "a"])
SERVICE_ACCOUNT = st.sampled_from(["default", "ci.bot", "trainer"])
PERMISSION = st.sampled_from([*PERMISSIONS, "read", "WRITE"])


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, _text())


AUTH = st.fixed_dictionaries({}, optional={
    "audience": st.one_of(_text(1), st.sampled_from(["https://x/%41", "mlflow-prod", "aud%%", "é"])),
    "issuers": st.lists(st.one_of(_text(1), st.just("https://issuer.example/%7Ec")), max_size=3),
    "allowedNamespaces": st.lists(_maybe(st.one_of(NAMESPACE, st.just("*"))), max_size=3),
    "adminServiceAccounts": st.lists(_maybe(st.builds(lambda n, s: f"{n}:{s}", NAMESPACE, SERVICE_ACCOUNT)),
                                     max_size=3),
    "namespacePermissions": st.lists(_maybe(st.builds(lambda n, p: f"{n}:{p}", NAMESPACE, PERMISSION)),
                                     max_size=4),
    "defaultPermission": PERMISSION,
    "adminUsername": st.one_of(_text(1), st.sampled_from(["admin%1", "root", "ops@example.com"]),
                               st.builds(lambda c: f"{c}admin{c}", st.sampled_from(AWKWARD))),
    "tokenCacheTTLSeconds": st.integers(-1, 4000),
    "tokenReviewTimeoutSeconds": st.integers(0, 70),
    "permissionCacheTTLSeconds": st.integers(-1, 200),
    "basicAuth": st.fixed_dictionaries({"enabled": st.booleans()}),
    "authDatabase": st.just({"uriSecretRef": {"name": "db"}}),
    "tokenValidation": st.sampled_from([*TOKEN_VALIDATION, "jwks"]),
})
# Database URIs come from the user's Secrets (not the spec): awkward passwords included.
URI = st.builds(lambda pw: f"postgresql://u:{pw}@db:5432/auth",
                st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), max_size=12))


@contextlib.contextmanager
def _mlflow_env(path: Path) -> Iterator[None]:
    """The environment MLflow's server process reads its auth config under."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_USERNAME",
                                            "MLFLOW_AUTH_ADMIN_PASSWORD")}
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(path)
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _assert_read_back(path: Path, spec: Any, uris: StoreUris) -> None:
    config = load_config(path)  # raises ConfigError if the plugin would refuse to start
    auth = spec.auth
    assert config.audiences == (names.audience(spec, REF),)
    assert config.issuers == tuple(auth.issuers)
    assert config.allowed_namespaces == frozenset(names.allowed_namespaces(spec, REF))
    assert config.admin_service_accounts == frozenset(
        ServiceAccountRef(*sa.split(":", 1)) for sa in auth.admin_service_accounts)
    assert dict(config.namespace_permissions) == dict(p.split(":") for p in auth.namespace_permissions)
    assert config.token_cache_ttl_seconds == auth.token_cache_ttl_seconds
    assert config.tokenreview_timeout_seconds == auth.token_review_timeout_seconds
    assert config.permission_cache_ttl_seconds == auth.effective_permission_cache_ttl_seconds
    assert config.allow_basic_auth is auth.basic_auth.enabled
    assert config.token_validation == TOKEN_VALIDATION[auth.token_validation]
    with _mlflow_env(path):
        mlflow = read_auth_config()
    assert mlflow.admin_username == auth.admin_username
    assert mlflow.default_permission == auth.default_permission
    # The operator writes user and password percent-encoded (db_uri's rules), so SQLAlchemy
    # reads back the password the Secret held.
    expected = normalize_db_uri(uris.auth_database) if uris.auth_database else names.SQLITE_AUTH_URI
    assert mlflow.database_uri == expected


def test_every_spec_the_model_accepts_renders_an_ini_the_plugin_reads_back(tmp_path: Path) -> None:
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(auth=AUTH, uri=URI)
    def check(auth: dict[str, Any], uri: str) -> None:
        try:
            spec = parse_spec({"auth": auth})
        except SpecError as error:
            outcomes["refused"] += 1
            assert error.reason and "Traceback" not in error.message
            return
        outcomes["accepted"] += 1
        uris = StoreUris(auth_database=uri if spec.auth.auth_database else None)
        path = tmp_path / "auth.ini"
        # The bytes the config Secret carries into the pod's file.
        path.write_bytes(render_auth_ini(REF, spec, uris).encode())
        _assert_read_back(path, spec, uris)
        render_all(REF, spec, GENERATED, uris)  # the operator's own check agrees

    check()
    print(f"\nproperty: {outcomes['accepted']} specs accepted and read back, {outcomes['refused']} refused")
    # Both sides of the property were exercised, not one.
    assert outcomes["accepted"] >= 50 and outcomes["refused"] >= 50, outcomes


@pytest.mark.parametrize("value", ["https://x/%41", "aud%", "%(x)s", "%%"])
def test_a_percent_in_audience_or_issuer_reaches_the_plugin_verbatim(tmp_path: Path, value: str) -> None:
    spec = parse_spec({"auth": {"audience": value, "issuers": [f"https://issuer/{value}"]}})
    config = parse_config(render_auth_ini(REF, spec, StoreUris()))
    assert config.audiences == (value,)
    assert config.issuers == (f"https://issuer/{value}",)


# --- the model's rules, with the field named -----------------------------------------------

REFUSED = [
    ({"audience": "a b"}, "spec.auth.audience: must not contain whitespace or ',' (found ' ')"),
    ({"audience": "a\u00a0b"}, "spec.auth.audience: must not contain whitespace or ',' (found '\\xa0')"),
    ({"audience": ","}, "spec.auth.audience: must not contain whitespace or ','"),
    ({"audience": "a,b"}, "spec.auth.audience: must not contain whitespace or ','"),
    ({"issuers": ["https://ok", "https://a\u2028b"]}, "spec.auth.issuers[1]"),
    ({"issuers": ["https://ok", "x\x1cy"]}, "spec.auth.issuers[1]: must not contain whitespace"),
    ({"namespacePermissions": ["team-a:READ", "ml:EDIT", "team-a:EDIT"]},
     "spec.auth.namespacePermissions: namespace 'team-a' is listed at [0] and [2]"),
    ({"namespacePermissions": ["team-a:READ", "team-a:READ"]}, "is listed at [0] and [1]"),
]


@pytest.mark.parametrize(("auth", "words"), REFUSED)
def test_the_model_refuses_with_the_field_named(auth: dict[str, Any], words: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec({"auth": auth})
    assert error.value.reason == "InvalidSpec"
    assert words in error.value.message


@pytest.mark.parametrize("space", SPACES, ids=[f"U+{ord(c):04X}" for c in SPACES])
def test_every_unicode_space_is_refused_where_the_ini_would_split_or_strip_it(space: str) -> None:
    # configparser strips values with str.strip(): an admin name with a space at either
    # end would become another user in MLflow.
    for auth in ({"audience": f"a{space}b"}, {"issuers": [f"https://a{space}b"]},
                 {"adminUsername": f"{space}admin"}, {"adminUsername": f"admin{space}"}):
        with pytest.raises(SpecError):
            parse_spec({"auth": auth})


# --- the plugin's loader as the operator's last check -------------------------------------

def _bypassing_the_model(**auth: Any) -> Any:
    """A spec with values the model refuses: what an object stored under a looser CRD, or
    a gap in the model, would hand to the renderer."""
    spec = parse_spec({})
    return spec.model_copy(update={"auth": spec.auth.model_copy(update=auth)})


@pytest.mark.parametrize(("auth", "path", "words"), [
    ({"audience": "a b"}, "spec.auth.audience", "'a b' must not contain spaces"),
    ({"audience": "a\u00a0b"}, "spec.auth.audience", "must not contain spaces"),
    ({"audience": ","}, "spec.auth.audience", "audiences is required"),
    ({"namespace_permissions": ["team-a:READ", "ml:EDIT", "team-a:EDIT"]},
     "spec.auth.namespacePermissions[2]", "namespace 'team-a' is listed twice"),
    ({"allowed_namespaces": ["ml", "Team"]}, "spec.auth.allowedNamespaces[1]", "not a valid namespace"),
    ({"admin_service_accounts": ["ml:a", "ml"]}, "spec.auth.adminServiceAccounts[1]", "namespace:value"),
])
def test_an_ini_the_plugin_would_refuse_is_invalid_spec_naming_the_field(
        auth: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SpecError) as error:
        render_all(REF, _bypassing_the_model(**auth), GENERATED)
    assert error.value.reason == "InvalidSpec"
    assert error.value.message.startswith(f"{path}: the server's auth plugin would refuse it: ")
    assert words in error.value.message


def test_the_check_never_repeats_a_database_uri() -> None:
    uris = StoreUris(auth_database="postgresql://u:s3cret@db/auth")
    spec = _bypassing_the_model(audience="a b")
    with pytest.raises(SpecError) as error:
        check_auth_ini(render_auth_ini(REF, spec, uris).replace("audiences", "audiences = x\nbad"), spec, uris)
    assert "s3cret" not in error.value.message


# --- the real API server rejects the same values -------------------------------------------

@pytest.fixture(scope="module")
def server(admin: Kube) -> Iterator[ServerCheck]:
    with crd_namespace(admin, unique_namespace("spec-val")) as check:
        yield check


def _model_accepts(spec: dict[str, Any]) -> bool:
    try:
        parse_spec(spec)
        return True
    except SpecError:
        return False


@pytest.mark.parametrize("value", SPACES + [",", "%", "\u200b", "é"],
                         ids=[f"U+{ord(c):04X}" for c in SPACES + [",", "%", "\u200b", "é"]])
def test_api_server_and_model_agree_on_each_awkward_character(server: ServerCheck, value: str) -> None:
    for spec in ({"auth": {"audience": f"https://a{value}b"}},
                 {"auth": {"issuers": [f"https://a{value}b"]}},
                 {"auth": {"adminUsername": f"{value}admin"}}):
        _, errors = server.create(spec)
        assert (not errors) == _model_accepts(spec), (spec, errors)
        allowed = ("%", "\u200b", "é") + ((",",) if "adminUsername" in spec["auth"] else ())
        assert (not errors) == (value in allowed), (spec, errors)


def test_api_server_and_model_agree_on_generated_values(server: ServerCheck) -> None:
    seen = {"agree": 0}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(audience=_text(1).filter(lambda s: "\x00" not in s),
           permissions=st.lists(st.builds(lambda n, p: f"{n}:{p}", NAMESPACE, PERMISSION), max_size=4))
    def check(audience: str, permissions: list[str]) -> None:
        spec = {"auth": {"audience": audience, "namespacePermissions": permissions}}
        _, errors = server.create(spec)
        assert (not errors) == _model_accepts(spec), (spec, errors)
        seen["agree"] += 1

    check()
    print(f"\nAPI server and model agreed on {seen['agree']} generated specs")


def test_namespace_twice_is_refused_by_the_api_server_at_full_size(server: ServerCheck) -> None:
    # The CEL rule is quadratic: at maxItems (256) and maxLength it must stay within the
    # API server's per-call cost limit (the CRD itself was admitted, so the estimate fits).
    many = [f"{'n' * 60}{i:03d}:NO_PERMISSIONS" for i in range(256)]  # 63-character names
    assert server.create({"auth": {"namespacePermissions": many}})[1] == []
    _, errors = server.create({"auth": {"namespacePermissions": many[:255] + [many[0]]}})
    assert errors == ["spec.auth.namespacePermissions: Invalid value: auth.namespacePermissions lists a"
                      " namespace twice; give each namespace one permission"]
    _, errors = server.create({"auth": {"namespacePermissions": ["team-a:READ", "team-a:EDIT"]}})
    assert len(errors) == 1 and "twice" in errors[0]


def test_kubectl_apply_of_the_reported_values_is_refused_naming_each_field(
        server: ServerCheck, control_plane: ControlPlane, tmp_path: Path) -> None:
    manifest = server_manifest("reported", server.namespace, {"auth": {
        "audience": "a\u00a0b", "issuers": ["https://ok", "https://a b"],
        "namespacePermissions": ["team-a:READ", "team-a:EDIT"], "adminUsername": "admin\x1c"}})
    result = Kubectl(control_plane.kubeconfig, tmp_path)(
        "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(manifest, allow_unicode=True), check=False)
    assert result.returncode == 1, result.stdout
    for field in ("spec.auth.audience: Invalid value", "spec.auth.issuers[1]: Invalid value",
                  "spec.auth.namespacePermissions: Invalid value", "spec.auth.adminUsername: Invalid value"):
        assert field in result.stderr, result.stderr
    assert "lists a namespace twice" in result.stderr
    assert server.admin.get(CR, server.namespace, "reported") is None


# --- a running operator and objects stored under an older CRD ------------------------------

def _older_crd() -> dict[str, Any]:
    """The CRD as it was before these rules: the audience and issuer patterns and the
    one-namespace-once rule removed."""
    crd = copy.deepcopy(crd_manifest())
    for version in crd["spec"]["versions"]:
        auth = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["auth"]["properties"]
        auth["audience"].pop("pattern")
        auth["issuers"]["items"].pop("pattern")
        auth["namespacePermissions"].pop("x-kubernetes-validations")
    crd["metadata"].pop("resourceVersion", None)
    return crd


STORED = {  # name -> (spec.auth, the field the Degraded message names)
    "aud-space": ({"audience": "a b"}, "spec.auth.audience"),
    "aud-nbsp": ({"audience": "a\u00a0b"}, "spec.auth.audience"),
    "aud-comma": ({"audience": ","}, "spec.auth.audience"),
    "ns-twice": ({"namespacePermissions": ["team-a:READ", "team-a:EDIT"]}, "spec.auth.namespacePermissions"),
    "iss-space": ({"issuers": ["https://ok", "https://a b"]}, "spec.auth.issuers[1]"),
}
ACCEPTED = {"aud-pct": {"audience": "https://mlflow/%41", "issuers": ["https://issuer/%7E"]}}


@pytest.fixture(scope="module")
def stored(admin: Kube, crd: dict, proxy, tmp_path_factory) -> Iterator[tuple[Kube, str]]:
    ns = unique_namespace("spec-old")
    admin.create_namespace(ns)
    workdir = tmp_path_factory.mktemp("spec-old")
    try:
        admin.apply(_older_crd(), manager="tests-crd")
        wait_for(lambda: _older_accepts(admin, ns), 30, "the older CRD to be served")
        for name, (auth, _) in STORED.items():
            admin.create(CR, server_manifest(name, ns, {"auth": auth}))
    finally:
        install_crd(admin)  # the current CRD again, whatever happened
    assert ServerCheck(admin, ns).create({"auth": {"audience": "a b"}})[1], "the strict CRD is back"
    for name, auth in ACCEPTED.items():
        admin.create(CR, server_manifest(name, ns, {"auth": auth}))
    with chart_operator(admin, proxy, workdir, [ns], unique_namespace("op-spec"), runner=SimulatedRunner()):
        yield admin, ns


def _older_accepts(admin: Kube, ns: str) -> bool:
    # The API server swaps a CRD's schema a moment after the update is stored.
    return not ServerCheck(admin, ns).create({"auth": {"audience": "a b"}}, name="probe")[1]


def _degraded(admin: Kube, ns: str, name: str) -> dict[str, Any]:
    status = (admin.get(CR, ns, name) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Degraded"), {})


@pytest.mark.parametrize("name", sorted(STORED))
def test_a_stored_spec_the_plugin_would_refuse_is_degraded_naming_the_field(stored, name: str) -> None:
    admin, ns = stored
    degraded = wait_for(lambda: (lambda c: c if c.get("status") == "True" else None)(_degraded(admin, ns, name)),
                        30, f"{name} Degraded")
    assert degraded["reason"] == "InvalidSpec"
    assert degraded["message"].startswith(STORED[name][1]) or f"{STORED[name][1]}" in degraded["message"]
    events = wait_for(lambda: [e for e in admin.list("v1/events", ns)
                               if e["involvedObject"].get("name") == name and e["type"] == "Warning"],
                      20, f"a Warning Event for {name}")
    assert events[0]["reason"] == "InvalidSpec" and STORED[name][1] in events[0]["message"]
    # Nothing was rendered: no config for a server to crash-loop on.
    assert admin.get("v1/secrets", ns, f"{name}-config") is None
    assert admin.get("apps/v1/deployments", ns, name) is None


def test_fixing_the_field_recovers_under_the_current_crd(stored) -> None:
    admin, ns = stored
    wait_for(lambda: _degraded(admin, ns, "aud-space").get("status") == "True", 30, "aud-space Degraded")
    admin.patch(CR, ns, "aud-space", {"spec": {"auth": {"audience": "mlflow-aud-space"}}})
    wait_for(lambda: _degraded(admin, ns, "aud-space").get("status") == "False", 30, "aud-space recovered")
    wait_for(lambda: admin.get("v1/secrets", ns, "aud-space-config"), 20, "its config Secret")


def test_a_percent_is_served_not_refused(stored) -> None:
    admin, ns = stored
    secret = wait_for(lambda: admin.get("v1/secrets", ns, "aud-pct-config"), 30, "aud-pct's config Secret")
    config = parse_config(base64.b64decode(secret["data"][names.AUTH_INI_KEY]).decode())
    assert config.audiences == ("https://mlflow/%41",)
    assert config.issuers == ("https://issuer/%7E",)
    status = wait_for(lambda: (admin.get(CR, ns, "aud-pct") or {}).get("status", {}).get("audience"),
                      30, "aud-pct's status.audience")
    assert status == "https://mlflow/%41"
    assert _degraded(admin, ns, "aud-pct").get("status") == "False"


# --- the CLI says the same -----------------------------------------------------------------

def test_render_of_a_bad_spec_names_the_field_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(server_manifest("bad", "ml", {"auth": {
        "audience": "a\u00a0b", "namespacePermissions": ["ml:READ", "ml:EDIT"]}}), allow_unicode=True))
    result = subprocess.run([str(Path(sys.executable).with_name("mlflow-operator")), "render", "-f", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "spec.auth.audience: must not contain whitespace or ','" in result.stderr
    assert "spec.auth.namespacePermissions: namespace 'ml' is listed at [0] and [1]" in result.stderr
