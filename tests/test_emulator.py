"""The emulated API server behaves like kube-apiserver where our code relies on it.

Every test talks to the emulator over real HTTP with the real `kubernetes`
client (or plain HTTP where the status code itself is the point).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import kubernetes
import pytest
import urllib3
from kubernetes.client import ApiException

from tests.support.kube import KubeEmulator
from tests.support.tokens import API_AUDIENCE, ISSUER, mint_alg_none_token, mint_hs256_token, mint_token, \
    other_private_key

CR = ('mlflow-operator.dev', 'v1alpha1')


def http(kube: KubeEmulator, method: str, path: str, body: Any = None,
         content_type: str = 'application/json', token: str | None = 'test') -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {'Content-Type': content_type}
    if token:
        headers['Authorization'] = f'Bearer {token}'
    request = urllib.request.Request(kube.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b'null')
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b'null')


@pytest.fixture
def core(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(kube_client)


@pytest.fixture
def custom(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube_client)


@pytest.fixture
def auth(kube_client: kubernetes.client.ApiClient) -> kubernetes.client.AuthenticationV1Api:
    return kubernetes.client.AuthenticationV1Api(kube_client)


def mlflow_server(name: str, **spec: Any) -> dict[str, Any]:
    return {'apiVersion': 'mlflow-operator.dev/v1alpha1', 'kind': 'MLflowServer',
            'metadata': {'name': name}, 'spec': spec}


# ---- objects: create / read / list / patch / delete ------------------------------

def test_create_stamps_server_metadata_and_answers_201(kube: KubeEmulator) -> None:
    code, obj = http(kube, 'POST', '/api/v1/namespaces/ns1/configmaps', {'metadata': {'name': 'c'}})
    assert code == 201
    meta = obj['metadata']
    assert meta['namespace'] == 'ns1'  # filled from the URL
    assert len(meta['uid']) == 36 and meta['resourceVersion'].isdigit()
    assert meta['creationTimestamp'].endswith('Z') and meta['generation'] == 1
    assert obj['kind'] == 'ConfigMap' and obj['apiVersion'] == 'v1'


def test_custom_objects_api_round_trip(kube: KubeEmulator, custom: kubernetes.client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', mlflow_server('m', replicas=1))
    fetched = custom.get_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm')
    assert fetched['metadata']['uid'] == created['metadata']['uid']
    patched = custom.patch_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm', {'spec': {'replicas': 2}})
    assert patched['spec'] == {'replicas': 2}
    assert int(patched['metadata']['resourceVersion']) > int(created['metadata']['resourceVersion'])
    listed = custom.list_namespaced_custom_object(*CR, 'ns1', 'mlflowservers')
    assert listed['kind'] == 'MLflowServerList' and listed['apiVersion'] == 'mlflow-operator.dev/v1alpha1'
    assert [o['metadata']['name'] for o in listed['items']] == ['m']
    custom.delete_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm')
    with pytest.raises(ApiException) as err:
        custom.get_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm')
    assert err.value.status == 404


def test_objects_reach_namespaced_lists(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_secret('a', {'metadata': {'name': 's'}, 'stringData': {'k': 'v'}})
    core.create_namespaced_secret('b', {'metadata': {'name': 's'}})
    assert [s.metadata.namespace for s in core.list_namespaced_secret('a').items] == ['a']
    assert sorted(s.metadata.namespace for s in core.list_secret_for_all_namespaces().items) == ['a', 'b']


def test_create_existing_name_is_409(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_service_account('ns1', {'metadata': {'name': 'sa'}})
    with pytest.raises(ApiException) as err:
        core.create_namespaced_service_account('ns1', {'metadata': {'name': 'sa'}})
    assert err.value.status == 409
    body = json.loads(err.value.body)
    assert body['reason'] == 'AlreadyExists' and body['message'] == 'serviceaccounts "sa" already exists'


def test_missing_object_is_404_with_status(kube: KubeEmulator) -> None:
    code, body = http(kube, 'GET', '/apis/apps/v1/namespaces/ns1/deployments/nope')
    assert code == 404
    assert body['kind'] == 'Status' and body['reason'] == 'NotFound'
    assert body['message'] == 'deployments.apps "nope" not found' and 'traceback' not in json.dumps(body)


def test_unknown_resource_is_404(kube: KubeEmulator) -> None:
    code, body = http(kube, 'GET', '/apis/example.com/v1/namespaces/ns1/widgets')
    assert code == 404 and body['reason'] == 'NotFound'


def test_namespaces_are_objects_too(core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespace({'metadata': {'name': 'team-a'}})
    assert [n.metadata.name for n in core.list_namespace().items] == ['team-a']
    assert core.read_namespace('team-a').status.phase == 'Active'
    core.delete_namespace('team-a')
    assert core.list_namespace().items == []


def test_finalizers_hold_deletion_until_removed(kube: KubeEmulator, custom: kubernetes.client.CustomObjectsApi) -> None:
    body = mlflow_server('m')
    body['metadata']['finalizers'] = ['mlflow-operator.dev/cleanup']
    custom.create_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', body)
    custom.delete_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm')
    held = custom.get_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm')
    assert held['metadata']['deletionTimestamp']
    custom.patch_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm', {'metadata': {'finalizers': None}})
    assert kube.get('mlflow-operator.dev/v1alpha1/mlflowservers', 'ns1', 'm') is None


def test_kubeconfig_loads_into_the_default_client(kube: KubeEmulator, kubeconfig: Any) -> None:
    kube.create_namespace('x')
    kubernetes.config.load_kube_config(config_file=str(kubeconfig))
    try:
        names = [n.metadata.name for n in kubernetes.client.CoreV1Api().list_namespace().items]
    finally:
        kubernetes.client.Configuration.set_default(kubernetes.client.Configuration())
    assert names == ['x']


async def test_usable_from_async_tests(kube: KubeEmulator) -> None:
    kube.create_namespace('async')
    async with aiohttp.ClientSession() as session:
        async with session.get(f'{kube.url}/api/v1/namespaces/async') as response:
            assert response.status == 200
            assert (await response.json())['metadata']['name'] == 'async'


# ---- TokenReview -----------------------------------------------------------------

def review(auth: kubernetes.client.AuthenticationV1Api, token: str,
           audiences: list[str] | None = None) -> kubernetes.client.V1TokenReviewStatus:
    spec: dict[str, Any] = {'token': token}
    if audiences is not None:
        spec['audiences'] = audiences
    return auth.create_token_review({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'TokenReview',
                                     'spec': spec}).status


def test_tokenreview_authenticates_a_live_service_account(kube: KubeEmulator, auth: Any) -> None:
    uid = kube.create_service_account('jobs', 'trainer')
    status = review(auth, kube.token_for('jobs', 'trainer', ['mlflow', 'other']), ['mlflow'])
    assert status.authenticated is True and status.error is None
    assert status.audiences == ['mlflow']
    assert status.user.username == 'system:serviceaccount:jobs:trainer'
    assert status.user.uid == uid
    assert status.user.groups == ['system:serviceaccounts', 'system:serviceaccounts:jobs', 'system:authenticated']
    assert status.user.extra['authentication.kubernetes.io/credential-id'][0].startswith('JTI=')


def test_tokenreview_is_never_stored(kube: KubeEmulator, auth: Any) -> None:
    kube.create_service_account('jobs', 'trainer')
    token = kube.token_for('jobs', 'trainer', ['mlflow'])
    assert review(auth, token, ['mlflow']).authenticated
    assert review(auth, token, ['mlflow']).authenticated  # not a 409
    assert kube.tokenreview.count == 2
    assert not any(key[0].plural == 'tokenreviews' for key in kube.objects)


def test_tokenreview_empty_audiences_mean_the_api_audience(kube: KubeEmulator, auth: Any) -> None:
    kube.create_service_account('jobs', 'trainer')
    api_token = kube.token_for('jobs', 'trainer', [API_AUDIENCE])
    assert review(auth, api_token).audiences == [API_AUDIENCE]
    mlflow_only = review(auth, kube.token_for('jobs', 'trainer', ['mlflow']))
    assert not mlflow_only.authenticated
    assert 'is invalid for the target audiences' in mlflow_only.error


@pytest.mark.parametrize('kwargs, error', [
    ({'expires_in': -600}, 'service account token has expired'),
    ({'not_before': time.time() + 600}, 'service account token is not valid yet'),
    ({'key': other_private_key()}, 'error in cryptographic primitive'),
])
def test_tokenreview_rejects_bad_tokens(kube: KubeEmulator, auth: Any, kwargs: dict[str, Any], error: str) -> None:
    kube.create_service_account('jobs', 'trainer')
    status = review(auth, kube.token_for('jobs', 'trainer', ['mlflow'], **kwargs), ['mlflow'])
    assert not status.authenticated and error in status.error
    assert status.user.username is None


def test_tokenreview_leeway_is_a_minute_like_the_real_api(kube: KubeEmulator, auth: Any) -> None:
    kube.create_service_account('jobs', 'trainer')
    assert review(auth, kube.token_for('jobs', 'trainer', ['mlflow'], expires_in=-10), ['mlflow']).authenticated


@pytest.mark.parametrize('mint', [mint_alg_none_token, mint_hs256_token])
def test_tokenreview_rejects_algorithm_tricks(kube: KubeEmulator, auth: Any, mint: Any) -> None:
    uid = kube.create_service_account('jobs', 'trainer')
    status = review(auth, mint('jobs', 'trainer', ['mlflow'], uid=uid), ['mlflow'])
    assert not status.authenticated and 'unexpected signature algorithm' in status.error


def test_tokenreview_ignores_foreign_issuers_and_garbage(kube: KubeEmulator, auth: Any) -> None:
    kube.create_service_account('jobs', 'trainer')
    foreign = review(auth, kube.token_for('jobs', 'trainer', ['mlflow'], issuer='https://elsewhere'), ['mlflow'])
    garbage = review(auth, 'not-a-jwt', ['mlflow'])
    for status in (foreign, garbage):  # no authenticator claims them: no error, no user
        assert not status.authenticated and status.error is None and status.user.username is None


def test_tokenreview_fails_once_the_service_account_is_gone(kube: KubeEmulator, auth: Any) -> None:
    kube.create_service_account('jobs', 'trainer')
    token = kube.token_for('jobs', 'trainer', ['mlflow'])
    kube.delete_service_account('jobs', 'trainer')
    assert 'has been invalidated' in review(auth, token, ['mlflow']).error
    kube.create_service_account('jobs', 'trainer')  # same name, new uid
    assert not review(auth, token, ['mlflow']).authenticated
    assert review(auth, kube.token_for('jobs', 'trainer', ['mlflow']), ['mlflow']).authenticated


def test_tokenreview_checks_the_bound_pod(kube: KubeEmulator, auth: Any) -> None:
    uid = kube.create_service_account('jobs', 'trainer')
    pod = kube.create('v1/pods', {'metadata': {'name': 'p'}, 'spec': {'containers': []}}, namespace='jobs')
    bound = {'name': 'p', 'uid': pod['metadata']['uid']}
    status = review(auth, mint_token('jobs', 'trainer', ['mlflow'], uid=uid, pod=bound), ['mlflow'])
    assert status.user.extra['authentication.kubernetes.io/pod-name'] == ['p']
    kube.delete('v1/pods', 'jobs', 'p')
    assert not review(auth, mint_token('jobs', 'trainer', ['mlflow'], uid=uid, pod=bound), ['mlflow']).authenticated


def test_tokenreview_requires_and_records_caller_credentials(kube: KubeEmulator) -> None:
    kube.create_service_account('jobs', 'trainer')
    body = {'spec': {'token': kube.token_for('jobs', 'trainer', ['mlflow']), 'audiences': ['mlflow']}}
    assert http(kube, 'POST', '/apis/authentication.k8s.io/v1/tokenreviews', body, token=None)[0] == 401
    code, answer = http(kube, 'POST', '/apis/authentication.k8s.io/v1/tokenreviews', body, token='server-sa-token')
    assert code == 201 and answer['status']['authenticated'] is True
    assert kube.tokenreview.callers == ['server-sa-token']
    assert http(kube, 'POST', '/apis/authentication.k8s.io/v1/tokenreviews', {'spec': {}})[0] == 400


def test_tokenreview_faults_slow_failing_dropped(kube: KubeEmulator, kube_client: Any, auth: Any) -> None:
    kube.create_service_account('jobs', 'trainer')
    token = kube.token_for('jobs', 'trainer', ['mlflow'])
    body = {'spec': {'token': token, 'audiences': ['mlflow']}}

    kube.tokenreview.delay = 1.0
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        auth.create_token_review(body, _request_timeout=0.2)
    assert time.monotonic() - started < 1.0

    kube.tokenreview.delay, kube.tokenreview.fail_status = 0, 500
    with pytest.raises(ApiException) as err:
        auth.create_token_review(body)
    assert err.value.status == 500

    kube.tokenreview.fail_status, kube.tokenreview.disconnect = None, True
    with pytest.raises(urllib3.exceptions.HTTPError):
        auth.create_token_review(body, _request_timeout=2)
    assert kube.tokenreview.count == 3  # each faulty review counted

    kube.tokenreview.reset()
    assert auth.create_token_review(body).status.authenticated
    assert kube.tokenreview.count == 1


def test_tokenreview_unreachable_api_is_connection_refused(kube: KubeEmulator, tmp_path: Any) -> None:
    config = kube.write_kubeconfig(tmp_path / 'dead', server=kube.dead_url())
    client = kubernetes.config.new_client_from_config(config_file=str(config))
    client.configuration.retries = False
    try:
        with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
            kubernetes.client.AuthenticationV1Api(client).create_token_review({'spec': {'token': 't'}})
        assert isinstance(err.value.reason, urllib3.exceptions.NewConnectionError)
    finally:
        client.close()


def test_issuer_constant_matches_minted_tokens() -> None:
    import jwt
    claims = jwt.decode(mint_token('a', 'b', ['x']), options={'verify_signature': False})
    assert claims['iss'] == ISSUER and claims['aud'] == ['x'] and claims['sub'] == 'system:serviceaccount:a:b'
    assert set(claims['kubernetes.io']) == {'namespace', 'serviceaccount'}
    assert jwt.get_unverified_header(mint_token('a', 'b', ['x']))['kid']
