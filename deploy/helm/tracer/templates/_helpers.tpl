{{- define "tracer.labels" -}}
app.kubernetes.io/name: tracer
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tracer.selectorLabels" -}}
app.kubernetes.io/name: tracer
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The configuration with the release namespace added to the excluded namespaces. */}}
{{- define "tracer.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $exclude := default (dict) $config.exclude -}}
{{- $namespaces := default (list) $exclude.namespaces -}}
{{- if not (has .Release.Namespace $namespaces) -}}
{{- $namespaces = append $namespaces .Release.Namespace -}}
{{- end -}}
{{- $_ := set $exclude "namespaces" $namespaces -}}
{{- $_ := set $config "exclude" $exclude -}}
{{- toYaml $config -}}
{{- end -}}
