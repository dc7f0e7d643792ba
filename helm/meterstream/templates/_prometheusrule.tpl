{{/*
Helpers of the PrometheusRule (prometheusrule.yaml).
*/}}

{{/*
PromQL label matchers for this release's series: what the ServiceMonitor's scrapes carry
(the operator names the job after the Service), unless prometheusRule.seriesSelector says.
*/}}
{{- define "meterstream.seriesSelector" -}}
{{- default (printf "job=%q,namespace=%q" (include "meterstream.fullname" .) .Release.Namespace) .Values.prometheusRule.seriesSelector }}
{{- end }}

{{/*
The fewest consumer pods the release runs: 0 when the Deployment may be scaled to zero,
where "no consumer at all" is expected and not worth a page.
*/}}
{{- define "meterstream.minPods" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end }}
{{- end }}

{{/* Seconds as the shortest exact duration people read: 86400 -> 24h, 900 -> 15m. */}}
{{- define "meterstream.humanSeconds" -}}
{{- $seconds := . | int }}
{{- if and $seconds (eq (mod $seconds 3600) 0) }}{{ div $seconds 3600 }}h
{{- else if and $seconds (eq (mod $seconds 60) 0) }}{{ div $seconds 60 }}m
{{- else }}{{ $seconds }}s
{{- end }}
{{- end }}

{{/* An alert's labels: its severity and prometheusRule.alertLabels. (list $ severity) */}}
{{- define "meterstream.alertLabels" -}}
{{- $root := index . 0 -}}
severity: {{ index . 1 | quote }}
{{- with $root.Values.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
An alert's runbook: the README section named after it (GitHub-style anchor: the heading in
lower case), "" without prometheusRule.runbookBaseUrl. (list $ alertname)
*/}}
{{- define "meterstream.runbookUrl" -}}
{{- $root := index . 0 }}
{{- with $root.Values.prometheusRule.runbookBaseUrl }}
{{- printf "%s#%s" (trimSuffix "/" .) (index $ 1 | lower) }}
{{- end }}
{{- end }}
