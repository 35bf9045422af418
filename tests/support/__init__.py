"""Test support: a real Kubernetes control plane and what the tests need around it.

- ``controlplane``: etcd + kube-apiserver + kube-controller-manager v1.35 on 127.0.0.1
  (``scripts/cluster`` and the session fixture in ``tests/conftest.py``).
- ``kubeapi``: a small sync client for the API server (create/get/list/patch/apply,
  TokenRequest tokens, kubeconfigs for other identities).
- ``node``: a Node that binds and reports pods (no container runtime here); the
  e2e process runner plugs into it.
- ``faultproxy``: a TLS proxy in front of the API server: request counts, 500s, delays,
  dropped connections, outages.
- ``crd``, ``kubectl``: the CRD installed and judged by the API server; the real kubectl.
- ``tokens``: forged tokens (the attacker's); ``postgres``: fresh databases;
  ``routes``: MLflow's native route paths.
"""
