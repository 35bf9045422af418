"""Test support: the Kubernetes API emulator and ServiceAccount tokens.

- ``tests.support.kube.KubeEmulator``: kmock 0.8's KubernetesEmulator with the
  gaps filled (uid/resourceVersion/409/PUT/selectors/watch/status subresource/
  discovery/TokenReview); runs over real HTTP on 127.0.0.1 in a thread.
- ``tests.support.harness``: the sync helpers the ``kube`` fixture offers
  (create/get/patch/delete, namespaces, ServiceAccounts, tokens, kubeconfig).
- ``tests.support.tokenreview``: TokenReview semantics and fault switches.
- ``tests.support.tokens``: ``mint_token`` and friends (per-session RS256 key).
- ``tests.support.kubeproto``: pure protocol helpers (paths, patches, selectors).

Fixtures (``tests/conftest.py``): ``kube`` (a running emulator per test),
``kubeconfig`` (its kubeconfig file path), ``kube_client`` (a ``kubernetes``
ApiClient on it).
"""
