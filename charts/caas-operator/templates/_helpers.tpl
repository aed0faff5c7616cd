{{/* Names and labels shared by every template of the chart. */}}

{{- define "caas-operator.fullname" -}}
{{- if contains "caas-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-caas-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "caas-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "caas-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's pods carry app.kubernetes.io/name=caas-operator: the NetworkPolicies the
operator writes for a platform admit that label (in the operator's namespace) to the internal
admin port. Do not change it. */}}
{{- define "caas-operator.selectorLabels" -}}
app.kubernetes.io/name: caas-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "caas-operator.labels" -}}
{{ include "caas-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "caas-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
