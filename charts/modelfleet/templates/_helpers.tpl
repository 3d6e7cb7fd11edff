{{/* Chart name, truncated to 63 characters (the DNS label limit on names and label values). */}}
{{- define "modelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: <release>-<chart>, or just <release> when it already holds
the chart name (so `helm install modelfleet ...` gives "modelfleet", not "modelfleet-modelfleet").
*/}}
{{- define "modelfleet.fullname" -}}
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

{{- define "modelfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "modelfleet.labels" -}}
helm.sh/chart: {{ include "modelfleet.chart" . }}
{{ include "modelfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelfleet
{{- end }}

{{/* Selector labels: immutable on a Deployment, so nothing here may change between versions. */}}
{{- define "modelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "modelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "modelfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "modelfleet.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Namespaces the operator watches in namespace scope: watchNamespaces, or the release namespace.
Rendered as a JSON list so callers can `fromJsonArray` it.
*/}}
{{- define "modelfleet.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- toJson .Values.operator.watchNamespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot phrase clearly. */}}
{{- define "modelfleet.validate" -}}
{{- if and (eq .Values.operator.scope "cluster") .Values.operator.watchNamespaces }}
{{- fail "operator.watchNamespaces is only used with operator.scope=namespace; set operator.scope=namespace or remove operator.watchNamespaces" }}
{{- end }}
{{- if and (gt (int .Values.operator.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicaCount > 1 needs operator.leaderElection.enabled=true (otherwise every replica reconciles at once)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true (the ServiceMonitor selects that Service)" }}
{{- end }}
{{- end }}
