{{/*
RBAC rules of the operator, in two groups:

* "namespacedRules": what the operator does inside the namespaces it watches. Granted by a
  ClusterRole when it watches every namespace, or by one Role per namespace listed in
  watchNamespaces.
* "clusterRules": cluster-scoped objects; always a ClusterRole.

Every verb is justified by a call the operator (our code or Kopf) makes. In the tests the
operator runs as the chart's ServiceAccount against a real kube-apiserver, and removing any
one rule makes it meet a real 403 (tests/operator/test_rbac_real.py);
tests/chart/test_rbac.py checks with SubjectAccessReview that these rules allow exactly
the calls listed in tests/operator/rbac_record.py.
*/}}

{{- define "mlflow-operator.namespacedRules" -}}
# MLflowServer: Kopf lists and watches them (every reconcile starts from a watch event),
# patches them to add/remove its finalizer and keep its progress annotations, and the
# operator reads the parent back (get) when one of its children changes.
- apiGroups: ["mlflow-operator.dev"]
  resources: ["mlflowservers"]
  verbs: ["get", "list", "watch", "patch"]
# MLflowServer status: conditions, phase, url, audience and adminSecret are written
# through the status subresource.
- apiGroups: ["mlflow-operator.dev"]
  resources: ["mlflowservers/status"]
  verbs: ["patch"]
# Children the operator renders and keeps in line: read by name, created when missing,
# server-side applied (patch) on drift. They are never deleted by the operator (their ownerReferences
# let the garbage collector remove them with the MLflowServer). They are also watched
# (label app.kubernetes.io/managed-by=mlflow-operator) so a finished migration Job, a
# ready Deployment or a deleted child triggers a reconcile at once.
# Secrets: the generated admin password and Flask key (create-only) and the server's ini;
# the operator also reads user-supplied Secrets (database URI) to render the ini.
- apiGroups: [""]
  resources: ["secrets", "serviceaccounts", "services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The MLflow server Deployment.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The database migration Job that gates each rollout. A new image or database gets a new
# Job; once it succeeds, the finished Jobs of earlier migrations are deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Optional children (spec.ingress, spec.networkPolicy, and the PodDisruptionBudget of a
# multi-replica server): as above, plus delete when the spec stops asking for them. Not
# watched: the resync timer repairs them.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses", "networkpolicies"]
  verbs: ["get", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch", "delete"]
{{- if .Values.rbac.serviceMonitors }}
# Only with rbac.serviceMonitors: the Prometheus Operator ServiceMonitor of each
# MLflowServer with spec.monitoring.serviceMonitor.enabled, kept in line like the optional
# children above and deleted when the spec turns it off. Off by default: the chart cannot
# know whether the cluster has the ServiceMonitor CRD.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
{{- end }}
# Events on MLflowServers (Created, MigrationFailed, ...): posted by Kopf and the handlers.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "mlflow-operator.clusterRules" -}}
# One ClusterRoleBinding per MLflowServer binds the server's ServiceAccount to
# system:auth-delegator, so the server may create TokenReviews (a second one, with
# workspaces, to mlflow-operator:workspace-server). Cluster-scoped objects
# cannot have a namespaced owner, so the operator also deletes it (finalizer).
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterrolebindings"]
  verbs: ["get", "create", "patch", "delete"]
# Creating that binding needs "bind" on the role it references (Kubernetes' RBAC
# escalation check). Only this ClusterRole and, for servers with workspaces, the chart's
# mlflow-operator:workspace-server (templates/mlflow-roles.yaml): the operator cannot grant
# anything else, and it does not hold TokenReview permissions itself.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["clusterroles"]
  verbs: ["bind"]
  resourceNames: ["system:auth-delegator", "mlflow-operator:workspace-server"]
{{- if not .Values.watchNamespaces }}
# Cluster-wide mode only: Kopf watches CustomResourceDefinitions to notice when the
# MLflowServer CRD is installed, upgraded or removed while it runs.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{- /*
The injection webhook's rules (templates/webhook-rbac.yaml; only with webhook.enabled).
Reading the MLflowServer a Pod's label names is the "get" of the namespaced rules above.
*/ -}}
{{- define "mlflow-operator.webhookNamespacedRules" -}}
# The webhook's CA and serving certificate: read at start and on every check, written
# when renewed (the chart creates the Secret empty, so no create is needed).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "patch"]
  resourceNames: [{{ include "mlflow-operator.webhookSecret" . | quote }}]
{{- end }}

{{- define "mlflow-operator.webhookClusterRules" -}}
# The chart's MutatingWebhookConfiguration: read, and its caBundle patched to the
# operator's CA. No other webhook configuration can be read or changed.
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["mutatingwebhookconfigurations"]
  verbs: ["get", "patch"]
  resourceNames: [{{ include "mlflow-operator.fullname" . | quote }}]
{{- end }}
