{{- define "llm-gateway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llm-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one plane: (dict "root" $ "component" "control-plane") */}}
{{- define "llm-gateway.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llm-gateway.secretName" -}}
{{- default (printf "%s-secrets" (include "llm-gateway.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "llm-gateway.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{/* An env entry read from the chart's Secret: (dict "root" $ "name" "GATEWAY_NODE_TOKEN" "key" "node-token") */}}
{{- define "llm-gateway.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "llm-gateway.secretName" .root }}
      key: {{ .key }}
{{- end -}}

{{- define "llm-gateway.dataPlaneKind" -}}
{{- if eq .Values.dataPlane.spool.volume "persistentVolumeClaim" -}}StatefulSet{{- else if eq .Values.dataPlane.spool.volume "emptyDir" -}}Deployment{{- else -}}
{{- fail (printf "dataPlane.spool.volume must be emptyDir or persistentVolumeClaim, not %q" .Values.dataPlane.spool.volume) -}}
{{- end -}}
{{- end -}}
