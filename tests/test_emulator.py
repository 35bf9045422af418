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
import kmock
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


# Built when the test runs: parameters exist from collection on, maybe minutes earlier.
@pytest.mark.parametrize('minting, error', [
    (lambda: {'expires_in': -600}, 'service account token has expired'),
    (lambda: {'not_before': time.time() + 600}, 'service account token is not valid yet'),
    (lambda: {'key': other_private_key()}, 'error in cryptographic primitive'),
])
def test_tokenreview_rejects_bad_tokens(kube: KubeEmulator, auth: Any, minting: Any, error: str) -> None:
    kube.create_service_account('jobs', 'trainer')
    status = review(auth, kube.token_for('jobs', 'trainer', ['mlflow'], **minting()), ['mlflow'])
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


def test_offline_refuses_connections_then_recovers(kube: KubeEmulator, auth: Any) -> None:
    kube.create_service_account('jobs', 'trainer')
    body = {'spec': {'token': kube.token_for('jobs', 'trainer', ['mlflow']), 'audiences': ['mlflow']}}
    assert auth.create_token_review(body).status.authenticated  # a pooled keep-alive connection now
    with kube.offline():
        with pytest.raises(urllib3.exceptions.HTTPError):
            auth.create_token_review(body)
        with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
            auth.create_token_review(body)
        assert isinstance(err.value.reason, urllib3.exceptions.NewConnectionError)
    assert auth.create_token_review(body).status.authenticated


def test_issuer_constant_matches_minted_tokens() -> None:
    import jwt
    claims = jwt.decode(mint_token('a', 'b', ['x']), options={'verify_signature': False})
    assert claims['iss'] == ISSUER and claims['aud'] == ['x'] and claims['sub'] == 'system:serviceaccount:a:b'
    assert set(claims['kubernetes.io']) == {'namespace', 'serviceaccount'}
    assert jwt.get_unverified_header(mint_token('a', 'b', ['x']))['kid']


# ---- writes: optimistic concurrency, PUT, patches, status, generation -------------

def test_stale_resource_version_is_409(core: kubernetes.client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map('ns1', {'metadata': {'name': 'c'}, 'data': {'a': '1'}})
    core.patch_namespaced_config_map('c', 'ns1', {'data': {'a': '2'}})
    stale = first.metadata.resource_version
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map('c', 'ns1', {'metadata': {'resourceVersion': stale}, 'data': {'a': '3'}})
    assert err.value.status == 409 and json.loads(err.value.body)['reason'] == 'Conflict'
    first.data = {'a': '4'}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map('c', 'ns1', first)
    assert err.value.status == 409
    assert core.read_namespaced_config_map('c', 'ns1').data == {'a': '2'}


def test_put_replaces_the_object_but_keeps_identity(core: kubernetes.client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map('ns1', {'metadata': {'name': 'c', 'labels': {'x': '1'}},
                                                        'data': {'a': '1', 'b': '2'}})
    current = core.read_namespaced_config_map('c', 'ns1')
    current.data, current.metadata.labels = {'b': '3'}, None
    replaced = core.replace_namespaced_config_map('c', 'ns1', current)
    assert replaced.data == {'b': '3'} and replaced.metadata.labels is None
    assert replaced.metadata.uid == created.metadata.uid
    assert replaced.metadata.creation_timestamp == created.metadata.creation_timestamp
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)


def test_json_patch_applies_and_its_errors_are_422(kube: KubeEmulator) -> None:
    http(kube, 'POST', '/api/v1/namespaces/ns1/configmaps', {'metadata': {'name': 'c'}, 'data': {'a': '1'}})
    path = '/api/v1/namespaces/ns1/configmaps/c'
    ops = [{'op': 'test', 'path': '/data/a', 'value': '1'}, {'op': 'replace', 'path': '/data/a', 'value': '2'}]
    code, obj = http(kube, 'PATCH', path, ops, 'application/json-patch+json')
    assert code == 200 and obj['data'] == {'a': '2'}
    code, body = http(kube, 'PATCH', path, ops, 'application/json-patch+json')  # the test op fails now
    assert code == 422 and body['reason'] == 'Invalid'
    code, body = http(kube, 'PATCH', path, [{'op': 'remove', 'path': '/data/missing'}], 'application/json-patch+json')
    assert code == 422
    assert http(kube, 'PATCH', path, {'data': {}}, 'application/json-patch+json')[0] == 400
    assert http(kube, 'PATCH', path, {'data': {}}, 'text/plain')[0] == 415


def test_strategic_merge_patch_merges_containers_by_name(kube_client: Any) -> None:
    apps = kubernetes.client.AppsV1Api(kube_client)
    containers = [{'name': 'server', 'image': 'mlflow:1', 'env': [{'name': 'A', 'value': '1'}]},
                  {'name': 'sidecar', 'image': 'proxy:1'}]
    apps.create_namespaced_deployment('ns1', {'metadata': {'name': 'd'}, 'spec': {
        'selector': {'matchLabels': {'app': 'd'}},
        'template': {'metadata': {'labels': {'app': 'd'}}, 'spec': {'containers': containers}}}})
    # The client sends a dict body to built-in kinds as a strategic merge patch.
    patched = apps.patch_namespaced_deployment('d', 'ns1', {'spec': {'template': {'spec': {'containers': [
        {'name': 'server', 'image': 'mlflow:2', 'env': [{'name': 'B', 'value': '2'}]}]}}}})
    merged = {c.name: c for c in patched.spec.template.spec.containers}
    assert merged['server'].image == 'mlflow:2' and merged['sidecar'].image == 'proxy:1'
    assert [(e.name, e.value) for e in merged['server'].env] == [('A', '1'), ('B', '2')]
    deleted = apps.patch_namespaced_deployment('d', 'ns1', {'spec': {'template': {'spec': {'containers': [
        {'name': 'sidecar', '$patch': 'delete'}]}}}})
    assert [c.name for c in deleted.spec.template.spec.containers] == ['server']


def test_status_subresource_is_isolated_and_generation_tracks_spec(
        kube: KubeEmulator, custom: kubernetes.client.CustomObjectsApi) -> None:
    body = mlflow_server('m', replicas=1)
    body['status'] = {'phase': 'Forged'}
    created = custom.create_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', body)
    assert 'status' not in created and created['metadata']['generation'] == 1
    main = custom.patch_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm', {'status': {'phase': 'X'}})
    assert 'status' not in main
    status = custom.patch_namespaced_custom_object_status(
        *CR, 'ns1', 'mlflowservers', 'm', {'status': {'phase': 'Ready'}, 'spec': {'replicas': 9}})
    assert status['status'] == {'phase': 'Ready'} and status['spec'] == {'replicas': 1}
    assert status['metadata']['generation'] == 1
    labelled = custom.patch_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm', {'metadata': {'labels': {'a': 'b'}}})
    assert labelled['metadata']['generation'] == 1
    respec = custom.patch_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm', {'spec': {'replicas': 2}})
    assert respec['metadata']['generation'] == 2 and respec['status'] == {'phase': 'Ready'}


def test_noop_patch_changes_nothing(custom: kubernetes.client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', mlflow_server('m', replicas=1))
    same = custom.patch_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm', {'spec': {'replicas': 1}})
    assert same['metadata']['resourceVersion'] == created['metadata']['resourceVersion']


def test_generate_name(core: kubernetes.client.CoreV1Api) -> None:
    one = core.create_namespaced_event('ns1', {'metadata': {'generateName': 'kopf-event-'},
                                               'involvedObject': {}, 'message': 'hi'})
    two = core.create_namespaced_event('ns1', {'metadata': {'generateName': 'kopf-event-'}, 'involvedObject': {}})
    assert one.metadata.name.startswith('kopf-event-') and len(one.metadata.name) == len('kopf-event-') + 5
    assert one.metadata.name != two.metadata.name


@pytest.mark.parametrize('path, body, code', [
    ('/api/v1/namespaces/ns1/configmaps', {'metadata': {'name': 'c', 'resourceVersion': '5'}}, 400),
    ('/api/v1/namespaces/ns1/configmaps', {'metadata': {'name': 'c', 'namespace': 'other'}}, 400),
    ('/api/v1/namespaces/ns1/configmaps', {'metadata': {'name': 'Not_Valid'}}, 422),
    ('/api/v1/namespaces/ns1/configmaps', {'metadata': {}}, 422),
    ('/api/v1/configmaps', {'metadata': {'name': 'c'}}, 405),
    ('/api/v1/namespaces/ns1/configmaps', ['not', 'an', 'object'], 400),
])
def test_bad_creates_get_clear_errors(kube: KubeEmulator, path: str, body: Any, code: int) -> None:
    answer_code, answer = http(kube, 'POST', path, body)
    assert answer_code == code and answer['kind'] == 'Status' and answer['message']


@pytest.mark.parametrize('path, name, ok', [
    ('/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', 'system:auth-delegator-x', True),
    ('/apis/rbac.authorization.k8s.io/v1/clusterroles', 'a/b', False),
    ('/api/v1/namespaces/ns1/services', 'm' * 63, True),
    ('/api/v1/namespaces/ns1/services', 'm' * 64, False),
    ('/api/v1/namespaces/ns1/services', '1abc', False),
    ('/api/v1/namespaces', 'has.dot', False),
    ('/api/v1/namespaces/ns1/configmaps', 'has.dot', True),
    ('/api/v1/namespaces/ns1/configmaps', 'x' * 254, False),
])
def test_names_follow_the_rule_of_their_kind(kube: KubeEmulator, path: str, name: str, ok: bool) -> None:
    code, body = http(kube, 'POST', path, {'metadata': {'name': name}})
    assert code == (201 if ok else 422), body


def test_opt_in_namespace_existence(kube: KubeEmulator) -> None:
    assert http(kube, 'POST', '/api/v1/namespaces/ghost/configmaps', {'metadata': {'name': 'a'}})[0] == 201
    kube.require_namespaces = True
    code, body = http(kube, 'POST', '/api/v1/namespaces/ghost/configmaps', {'metadata': {'name': 'b'}})
    assert code == 404 and body['message'] == 'namespaces "ghost" not found'
    kube.create_namespace('ghost')
    assert http(kube, 'POST', '/api/v1/namespaces/ghost/configmaps', {'metadata': {'name': 'b'}})[0] == 201


def test_delete_preconditions(kube: KubeEmulator, core: kubernetes.client.CoreV1Api) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'c'}})
    options = {'preconditions': {'uid': 'someone-else'}}
    assert http(kube, 'DELETE', '/api/v1/namespaces/ns1/configmaps/c', options)[0] == 409
    assert http(kube, 'DELETE', '/api/v1/namespaces/ns1/configmaps/c')[0] == 200
    assert http(kube, 'DELETE', '/api/v1/namespaces/ns1/configmaps/c')[0] == 404


def test_opt_in_garbage_collection_by_owner_references(kube: KubeEmulator, custom: Any, core: Any) -> None:
    owner = custom.create_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', mlflow_server('m'))
    ref = {'apiVersion': owner['apiVersion'], 'kind': owner['kind'], 'name': 'm',
           'uid': owner['metadata']['uid'], 'controller': True}
    for name in ('one', 'two'):
        core.create_namespaced_config_map('ns1', {'metadata': {'name': name, 'ownerReferences': [ref]}})
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'free'}})
    custom.delete_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm')
    assert len(kube.list('v1/configmaps', 'ns1')) == 3  # off by default: no controllers
    kube.collect_garbage = True
    owner = custom.create_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', mlflow_server('m'))
    core.patch_namespaced_config_map('one', 'ns1', {'metadata': {'ownerReferences': [
        {**ref, 'uid': owner['metadata']['uid']}]}})
    custom.delete_namespaced_custom_object(*CR, 'ns1', 'mlflowservers', 'm')
    # 'two' lost its owner while no collector ran; 'one' went with the new owner.
    assert sorted(c['metadata']['name'] for c in kube.list('v1/configmaps', 'ns1')) == ['free', 'two']


# ---- selectors, watches ------------------------------------------------------------

def test_label_and_field_selectors_on_lists(core: kubernetes.client.CoreV1Api) -> None:
    for name, labels in [('a', {'app': 'x', 'tier': 'web'}), ('b', {'app': 'y'}), ('c', {})]:
        core.create_namespaced_config_map('ns1', {'metadata': {'name': name, 'labels': labels}})

    def names(**kw: Any) -> list[str]:
        return [c.metadata.name for c in core.list_namespaced_config_map('ns1', **kw).items]
    assert names(label_selector='app=x') == ['a']
    assert names(label_selector='app!=x') == ['b', 'c']
    assert names(label_selector='app in (x,y)') == ['a', 'b']
    assert names(label_selector='app notin (x),app') == ['b']
    assert names(label_selector='!app') == ['c']
    assert names(label_selector='app=x,tier=web') == ['a']
    assert names(field_selector='metadata.name=b') == ['b']
    assert names(field_selector='metadata.name!=b') == ['a', 'c']


def watch_raw(kube: KubeEmulator, path: str) -> tuple[str, list[dict[str, Any]]]:
    """Read a watch stream to its end (the caller gives timeoutSeconds)."""
    with urllib.request.urlopen(kube.url + path, timeout=10) as response:
        lines = response.read().decode().splitlines()
        return response.headers['Content-Type'], [json.loads(line) for line in lines if line]


def test_watch_resumes_after_the_given_resource_version(kube: KubeEmulator, core: Any) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'a'}})
    rv = core.list_namespaced_config_map('ns1').metadata.resource_version
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'b'}})
    core.patch_namespaced_config_map('a', 'ns1', {'data': {'k': 'v'}})
    core.delete_namespaced_config_map('b', 'ns1')
    ctype, events = watch_raw(kube, f'/api/v1/namespaces/ns1/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1')
    assert ctype.startswith('application/json')
    assert [(e['type'], e['object']['metadata']['name']) for e in events] == [
        ('ADDED', 'b'), ('MODIFIED', 'a'), ('DELETED', 'b')]


def test_watch_without_resource_version_lists_then_streams(kube: KubeEmulator, core: Any) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'old'}})
    stream = kubernetes.watch.Watch().stream(core.list_namespaced_config_map, 'ns1', timeout_seconds=2)
    first = next(stream)
    assert (first['type'], first['object'].metadata.name) == ('ADDED', 'old')
    kube.create('v1/configmaps', {'metadata': {'name': 'new'}}, namespace='ns1')
    second = next(stream)
    assert (second['type'], second['object'].metadata.name) == ('ADDED', 'new')
    stream.close()


def test_watch_honours_timeout_and_selectors_and_bookmarks(kube: KubeEmulator, core: Any) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'a', 'labels': {'app': 'x'}}})
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'b', 'labels': {'app': 'y'}}})
    core.create_namespaced_config_map('ns2', {'metadata': {'name': 'a', 'labels': {'app': 'x'}}})
    started = time.monotonic()
    _, events = watch_raw(kube, '/api/v1/namespaces/ns1/configmaps?watch=true&labelSelector=app%3Dx'
                                '&timeoutSeconds=1&allowWatchBookmarks=true')
    assert 0.9 < time.monotonic() - started < 3
    assert [(e['type'], e['object']['metadata'].get('name')) for e in events] == [('ADDED', 'a'), ('BOOKMARK', None)]
    assert events[-1]['object']['metadata']['resourceVersion'] == core.list_namespaced_config_map('ns1').metadata.resource_version


def test_a_change_at_the_timeout_is_sent_before_the_closing_bookmark(kube: KubeEmulator, core: Any,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A client resumes from the closing BOOKMARK's resourceVersion: a change queued as the
    # watch times out must be in the stream, or that client never sees it (a lost event).
    stream_events = kube._stream_events

    async def then_a_late_change(*args: Any) -> None:
        await stream_events(*args)
        kube.op_create(kmock.resource('v1/configmaps'), 'ns1', {'metadata': {'name': 'late'}})

    monkeypatch.setattr(kube, '_stream_events', then_a_late_change)
    _, events = watch_raw(kube, '/api/v1/namespaces/ns1/configmaps?watch=true&resourceVersion=0'
                                '&timeoutSeconds=1&allowWatchBookmarks=true')
    assert [(e['type'], e['object']['metadata'].get('name')) for e in events] == [('ADDED', 'late'), ('BOOKMARK', None)]
    late = core.read_namespaced_config_map('late', 'ns1').metadata.resource_version
    assert int(events[-1]['object']['metadata']['resourceVersion']) >= int(late)


def test_watch_through_a_selector_sees_objects_enter_and_leave(kube: KubeEmulator, core: Any) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'a', 'labels': {'app': 'y'}}})
    rv = core.list_namespaced_config_map('ns1').metadata.resource_version
    core.patch_namespaced_config_map('a', 'ns1', {'metadata': {'labels': {'app': 'x'}}})
    core.patch_namespaced_config_map('a', 'ns1', {'data': {'k': 'v'}})
    core.patch_namespaced_config_map('a', 'ns1', {'metadata': {'labels': {'app': 'z'}}})
    core.patch_namespaced_config_map('a', 'ns1', {'data': {'k': 'w'}})
    _, events = watch_raw(kube, f'/api/v1/namespaces/ns1/configmaps?watch=true&resourceVersion={rv}'
                                '&labelSelector=app%3Dx&timeoutSeconds=1')
    assert [e['type'] for e in events] == ['ADDED', 'MODIFIED', 'DELETED']


def test_watch_list_sends_initial_events_then_a_bookmark(kube: KubeEmulator, core: Any) -> None:
    core.create_namespaced_config_map('ns1', {'metadata': {'name': 'a'}})
    _, events = watch_raw(kube, '/api/v1/namespaces/ns1/configmaps?watch=true&sendInitialEvents=true'
                                '&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1')
    assert [e['type'] for e in events] == ['ADDED', 'BOOKMARK', 'BOOKMARK']
    assert events[1]['object']['metadata']['annotations'] == {'k8s.io/initial-events-end': 'true'}


def test_watch_from_a_compacted_version_is_410(kube: KubeEmulator, core: Any) -> None:
    kube.event_log_limit = 2
    for name in 'abcde':
        core.create_namespaced_config_map('ns1', {'metadata': {'name': name}})
    _, events = watch_raw(kube, '/api/v1/namespaces/ns1/configmaps?watch=true&resourceVersion=1&timeoutSeconds=1')
    assert [e['type'] for e in events] == ['ERROR'] and events[0]['object']['code'] == 410


# ---- discovery, reactions, request log ------------------------------------------------

def test_discovery_core_and_groups(kube: KubeEmulator, kube_client: Any) -> None:
    code, core_list = http(kube, 'GET', '/api/v1')
    assert code == 200 and core_list['groupVersion'] == 'v1'
    names = {r['name']: r for r in core_list['resources']}
    assert names['pods']['shortNames'] == ['po']
    assert 'shortNames' not in names['pods/status'] and names['namespaces']['namespaced'] is False
    _, ours = http(kube, 'GET', '/apis/mlflow-operator.dev/v1alpha1')
    entry = next(r for r in ours['resources'] if r['name'] == 'mlflowservers')
    assert entry['kind'] == 'MLflowServer' and entry['shortNames'] == ['mlflow'] and entry['namespaced']
    dynamic = kubernetes.dynamic.DynamicClient(kube_client)
    api = dynamic.resources.get(api_version='mlflow-operator.dev/v1alpha1', kind='MLflowServer')
    api.create(body=mlflow_server('m'), namespace='ns1')
    assert [o.metadata.name for o in api.get(namespace='ns1').items] == ['m']


def test_reactions_answer_before_the_emulation(kube: KubeEmulator, auth: Any) -> None:
    kube['post /apis/authentication.k8s.io/v1/tokenreviews'] << 503
    with pytest.raises(ApiException) as err:
        auth.create_token_review({'spec': {'token': 't'}})
    assert err.value.status == 503
    assert kube.tokenreview.count == 0


def test_request_log_is_trimmed(kube: KubeEmulator, core: Any) -> None:
    kube.request_log_limit = 20
    for _ in range(60):
        core.list_namespaced_config_map('ns1')
    assert len(list(kube._requests)) <= 20
    kube.trim_requests()
    assert list(kube._requests) == []


def test_a_created_crd_is_served(kube: KubeEmulator, kube_client: Any, custom: Any) -> None:
    crd = {'apiVersion': 'apiextensions.k8s.io/v1', 'kind': 'CustomResourceDefinition',
           'metadata': {'name': 'widgets.example.com'},
           'spec': {'group': 'example.com', 'scope': 'Cluster',
                    'names': {'kind': 'Widget', 'plural': 'widgets', 'singular': 'widget', 'shortNames': ['wd']},
                    'versions': [{'name': 'v1', 'served': True, 'storage': True,
                                  'schema': {'openAPIV3Schema': {'type': 'object'}}}]}}
    created = kubernetes.client.ApiextensionsV1Api(kube_client).create_custom_resource_definition(crd)
    assert {c.type: c.status for c in created.status.conditions}['Established'] == 'True'
    custom.create_cluster_custom_object('example.com', 'v1', 'widgets', {
        'apiVersion': 'example.com/v1', 'kind': 'Widget', 'metadata': {'name': 'w'}})
    assert kube.get('example.com/v1/widgets', None, 'w')['kind'] == 'Widget'
    _, listing = http(kube, 'GET', '/apis/example.com/v1')
    assert [(r['name'], r['namespaced'], r['shortNames']) for r in listing['resources']] == [('widgets', False, ['wd'])]
