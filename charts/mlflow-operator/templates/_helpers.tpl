{{/* Chart name, overridable. */}}
{{- define "mlflow-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used for every object: "<release>-<chart>" unless the release name already
contains the chart name (then the release name alone), 63 characters at most (DNS label).
*/}}
{{- define "mlflow-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "name-version" of the chart, for the helm.sh/chart label. */}}
{{- define "mlflow-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator Pod; never change them on upgrade (selectors are immutable). */}}
{{- define "mlflow-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlflow-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels on every object, plus the user's commonLabels. */}}
{{- define "mlflow-operator.labels" -}}
helm.sh/chart: {{ include "mlflow-operator.chart" . }}
{{ include "mlflow-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mlflow-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "mlflow-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlflow-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference [registry/]repository[:tag][@digest] of an image value ({registry,
repository, tag, digest}); the tag defaults to appVersion.
Call: include "mlflow-operator.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion)
*/}}
{{- define "mlflow-operator.imageRef" -}}
{{- $repo := .image.repository }}
{{- with .image.registry }}
{{- $repo = printf "%s/%s" . $repo }}
{{- end }}
{{- $tag := default .appVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" $repo $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/* The operator's own image. */}}
{{- define "mlflow-operator.image" -}}
{{- include "mlflow-operator.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* The default image of MLflow servers (plugin/Dockerfile), for CRs without spec.image. */}}
{{- define "mlflow-operator.serverImage" -}}
{{- include "mlflow-operator.imageRef" (dict "image" .Values.serverImage "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* The injection webhook's Service and certificate Secret. */}}
{{- define "mlflow-operator.webhookService" -}}
{{- printf "%s-webhook" (include "mlflow-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "mlflow-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "mlflow-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
