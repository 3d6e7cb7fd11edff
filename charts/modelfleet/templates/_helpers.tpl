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

{{/* The activator's labels: the chart's, with its own component (never the operator's selector). */}}
{{- define "modelfleet.activatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "modelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: activator
{{- end }}

{{- define "modelfleet.activatorLabels" -}}
helm.sh/chart: {{ include "modelfleet.chart" . }}
{{ include "modelfleet.activatorSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelfleet
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
{{- $ns := list .Release.Namespace }}
{{- if .Values.operator.watchNamespaces }}
{{- $ns = .Values.operator.watchNamespaces }}
{{- if and .Values.activator.enabled (not (has .Release.Namespace $ns)) }}
{{- /* the operator reads the activator's endpoints in the release namespace */ -}}
{{- $ns = append $ns .Release.Namespace }}
{{- end }}
{{- end }}
{{- toJson $ns }}
{{- end }}

{{/* Cross-field checks the JSON schema cannot phrase clearly. */}}
{{- define "modelfleet.validate" -}}
{{- if and (eq .Values.operator.scope "cluster") .Values.operator.watchNamespaces }}
{{- fail "operator.watchNamespaces is only used with operator.scope=namespace; set operator.scope=namespace or remove operator.watchNamespaces" }}
{{- end }}
{{- $lo := (splitList "-" .Values.activator.ports | first | int) }}
{{- $hi := (splitList "-" .Values.activator.ports | last | int) }}
{{- if or (lt $lo 1024) (gt $hi 65535) (gt $lo $hi) }}
{{- fail (printf "activator.ports %q: need LOW-HIGH with 1024 <= LOW <= HIGH <= 65535" .Values.activator.ports) }}
{{- end }}
{{- if and (ge (int .Values.activator.metricsPort) $lo) (le (int .Values.activator.metricsPort) $hi) }}
{{- fail (printf "activator.metricsPort %d is inside activator.ports %s; pick one outside" (int .Values.activator.metricsPort) .Values.activator.ports) }}
{{- end }}
{{- if and (gt (int .Values.operator.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicaCount > 1 needs operator.leaderElection.enabled=true (otherwise every replica reconciles at once)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true (the ServiceMonitor selects that Service)" }}
{{- end }}
{{- end }}

{{/*
The PriorityClass of spec.warmCapacity's placeholder pods.
*/}}
{{- define "modelfleet.warmPriorityClass" -}}
{{- default (printf "%s-warm-capacity" (include "modelfleet.fullname" .)) .Values.warmCapacity.priorityClass.name }}
{{- end }}
