{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "greenml.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-greenml-operator unless the release already says so. */}}
{{- define "greenml.fullname" -}}
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

{{- define "greenml.selectorLabels" -}}
app.kubernetes.io/name: {{ include "greenml.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "greenml.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "greenml.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: greenml
{{- end }}

{{- define "greenml.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "greenml.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "greenml.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Replicas: one standalone operator, or ha.replicas peered ones (only one is active). */}}
{{- define "greenml.replicas" -}}
{{- if .Values.ha.enabled }}{{ .Values.ha.replicas }}{{ else }}1{{ end }}
{{- end }}

{{/* Annotations on CRDs: keep them on uninstall so custom resources survive. */}}
{{- define "greenml.crdMetadata" -}}
labels:
  {{- include "greenml.labels" . | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{/* Where provider=file's intensity ConfigMap is mounted (GREENML_INTENSITY_FILE: a directory). */}}
{{- define "greenml.intensityDir" -}}
/etc/greenml/intensity
{{- end }}

{{/* The intensity ConfigMap's name: the chart's own (provider.intensity.files) or an existing one. */}}
{{- define "greenml.intensityConfigMap" -}}
{{- if .Values.provider.intensity.files }}
{{- printf "%s-intensity" (include "greenml.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .Values.provider.intensity.existingConfigMap }}
{{- end }}
{{- end }}

{{/* Provider values the operator would refuse at start (a crash-looping pod): refused here. */}}
{{- define "greenml.validateProvider" -}}
{{- $p := .Values.provider }}
{{- if and (has $p.name (list "electricitymaps" "watttime")) (not $p.existingSecret) }}
{{- fail (printf "provider.name=%s needs provider.existingSecret: a Secret in the release namespace holding %s (keys: provider.secretKeys)" $p.name (ternary "the API token" "the username and password" (eq $p.name "electricitymaps"))) }}
{{- end }}
{{- if and (eq $p.name "prometheus") (not (or $p.prometheusUrl $p.url)) }}
{{- fail "provider.name=prometheus needs provider.prometheusUrl (or provider.url): the Prometheus serving carbon_intensity_gco2_per_kwh" }}
{{- end }}
{{- if and $p.intensity.files $p.intensity.existingConfigMap }}
{{- fail "provider.intensity: set files or existingConfigMap, not both" }}
{{- end }}
{{- if eq $p.name "file" }}
{{- if not (or $p.intensity.files $p.intensity.existingConfigMap) }}
{{- fail "provider.name=file needs provider.intensity.files (CSV per <zone>.csv key; the chart makes a ConfigMap) or provider.intensity.existingConfigMap" }}
{{- end }}
{{- else if or $p.intensity.files $p.intensity.existingConfigMap }}
{{- fail (printf "provider.intensity is read only with provider.name=file (provider.name is %s)" $p.name) }}
{{- end }}
{{- end }}
