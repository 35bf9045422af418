"""The injection webhook: a Pod labelled `mlflow-operator.dev/server: <name>` gets what a
job needs to log to that MLflowServer with its ServiceAccount token.

* `inject`: pure functions: which server a label names, what to add to the Pod (a JSONPatch),
  or why the Pod is refused;
* `certs`: the webhook's CA and serving certificate (generated, renewed before expiry);
* `keeper`: keeps them in a Secret and the MutatingWebhookConfiguration's caBundle in step;
* `server`: the HTTPS endpoint (Kopf's admission machinery) and its registration.
"""
