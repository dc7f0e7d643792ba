{{/* vim: set filetype=mustache: */}}
{{/*
The chart's name, truncated to 63 characters (the DNS label limit of Kubernetes names).
*/}}
{{- define "meterstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified name: the release name alone when it already contains the chart name.
*/}}
{{- define "meterstream.fullname" -}}
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

{{- define "meterstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object. The chart version is here, never in selectors (they are immutable).
*/}}
{{- define "meterstream.labels" -}}
helm.sh/chart: {{ include "meterstream.chart" . }}
{{ include "meterstream.instanceLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Every pod of the release (consumers, backfill, tests): the NetworkPolicy's selector.
*/}}
{{- define "meterstream.instanceLabels" -}}
app.kubernetes.io/name: {{ include "meterstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The Deployment's pods only: Service, PodDisruptionBudget and topology spread select these,
so backfill and test pods are never counted as consumers.
*/}}
{{- define "meterstream.selectorLabels" -}}
{{ include "meterstream.instanceLabels" . }}
app.kubernetes.io/component: consumer
{{- end }}

{{- define "meterstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meterstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meterstream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The Secret and key holding the Stripe API key: the chart's own, or stripe.existingSecret.
*/}}
{{- define "meterstream.stripeSecretName" -}}
{{- default (printf "%s-stripe" (include "meterstream.fullname" . | trunc 56 | trimSuffix "-")) .Values.stripe.existingSecret }}
{{- end }}

{{- define "meterstream.stripeSecretKey" -}}
{{- if .Values.stripe.existingSecret }}{{ .Values.stripe.existingSecretKey }}{{ else }}api-key{{ end }}
{{- end }}

{{/* Where the rendered config file is mounted (the image's CMD uses the same path). */}}
{{- define "meterstream.configDir" -}}/etc/meterstream{{- end }}
{{- define "meterstream.configPath" -}}{{ include "meterstream.configDir" . }}/meterstream.yaml{{- end }}

{{- define "meterstream.metricsPort" -}}
{{- dig "metrics" "port" 9464 .Values.config | int }}
{{- end }}

{{/*
The most pods that run at once: what shares the account-wide rate limit and what must fit
in the partitions.
*/}}
{{- define "meterstream.maxPods" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end }}
{{- end }}

{{/*
The connector's config file: .Values.config plus what the chart knows better.
- kafka.commonProperties go to both the consumer and the producer (their own keys win);
- with kafka.tls.existingSecret, ssl.ca.location points at the mounted CA unless set;
- rate_limit.replicas: the most pods at once (+1 for the backfill Job), unless set, so
  the processes together never exceed the account-wide budget.
*/}}
{{- define "meterstream.configData" -}}
{{- $config := deepCopy .Values.config }}
{{- $kafka := default (dict) $config.kafka }}
{{- $_ := set $config "kafka" $kafka }}
{{- $common := deepCopy .Values.kafka.commonProperties }}
{{- if and .Values.kafka.tls.existingSecret (not (hasKey $common "ssl.ca.location")) }}
{{- $_ := set $common "ssl.ca.location" (printf "%s/%s" .Values.kafka.tls.mountPath .Values.kafka.tls.caKey) }}
{{- end }}
{{- range $section := list "consumer" "producer" }}
{{- $props := merge (deepCopy (default (dict) (get $kafka $section))) (deepCopy $common) }}
{{- if $props }}
{{- $_ := set $kafka $section $props }}
{{- end }}
{{- end }}
{{- $rateLimit := default (dict) $config.rate_limit }}
{{- if not (hasKey $rateLimit "replicas") }}
{{- $pods := include "meterstream.maxPods" . | int }}
{{- if .Values.backfill.enabled }}{{ $pods = add1 $pods }}{{ end }}
{{- $_ := set $rateLimit "replicas" (max $pods 1) }}
{{- end }}
{{- $_ := set $config "rate_limit" $rateLimit }}
{{- toYaml $config }}
{{- end }}

{{/*
Environment shared by the consumers and the backfill Job: secrets only, by reference.
*/}}
{{- define "meterstream.env" -}}
- name: STRIPE_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "meterstream.stripeSecretName" . }}
      key: {{ include "meterstream.stripeSecretKey" . }}
{{- range $name, $key := .Values.kafka.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.kafka.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "meterstream.volumeMounts" -}}
- name: config
  mountPath: {{ include "meterstream.configDir" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "meterstream.volumes" -}}
- name: config
  configMap:
    name: {{ include "meterstream.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by the consumers and the backfill Job.
*/}}
{{- define "meterstream.podSettings" -}}
serviceAccountName: {{ include "meterstream.serviceAccountName" . }}
# meterstream never talks to the Kubernetes API.
automountServiceAccountToken: false
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Every check that helm can make before anything reaches the cluster. Each message says
which value to change.
*/}}
{{- define "meterstream.validate" -}}
{{- $v := .Values }}
{{- if and $v.stripe.apiKey $v.stripe.existingSecret }}
{{- fail "meterstream: set either stripe.apiKey or stripe.existingSecret, not both" }}
{{- end }}
{{- if not (or $v.stripe.apiKey $v.stripe.existingSecret) }}
{{- fail "meterstream: the Stripe API key is missing: create a Secret (kubectl create secret generic meterstream-stripe --from-literal=api-key=rk_live_...) and set stripe.existingSecret=meterstream-stripe, or set stripe.apiKey" }}
{{- end }}
{{- if not (dig "kafka" "bootstrap_servers" "" $v.config) }}
{{- fail "meterstream: config.kafka.bootstrap_servers is required (e.g. kafka-0.kafka:9092,kafka-1.kafka:9092)" }}
{{- end }}
{{- if hasKey (default (dict) $v.config.stripe) "api_key" }}
{{- fail "meterstream: never put the API key in config.stripe.api_key (it would land in a ConfigMap): use stripe.existingSecret" }}
{{- end }}
{{- if not (dig "metrics" "enabled" true $v.config) }}
{{- fail "meterstream: config.metrics.enabled must stay true: the probes use /livez and /readyz on the metrics port" }}
{{- end }}
{{- $drain := dig "shutdown" "drain_timeout_seconds" 20.0 $v.config | float64 }}
{{- if le ($v.terminationGracePeriodSeconds | float64) (addf $drain 5.0) }}
{{- fail (printf "meterstream: terminationGracePeriodSeconds (%v) must be greater than config.shutdown.drain_timeout_seconds (%v) + 5, or Kubernetes kills pods before they commit and leave the group" $v.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and $v.kafka.secretEnv (not $v.kafka.existingSecret) }}
{{- fail "meterstream: kafka.secretEnv needs kafka.existingSecret (the Secret its keys are read from)" }}
{{- end }}
{{- $provided := keys $v.kafka.secretEnv }}
{{- range $v.extraEnv }}{{ $provided = append $provided .name }}{{ end }}
{{- range $property, $env := (dig "kafka" "secret_env" (dict) $v.config) }}
{{- if not (has $env $provided) }}
{{- fail (printf "meterstream: config.kafka.secret_env reads %s from the environment variable %s, which nothing sets: add it to kafka.secretEnv (with kafka.existingSecret) or extraEnv" $property $env) }}
{{- end }}
{{- end }}
{{- $workers := $v.workers | int }}
{{- $partitions := 0 }}
{{- if not (kindIs "invalid" $v.kafka.partitions) }}{{ $partitions = $v.kafka.partitions | int }}{{ end }}
{{- if $v.autoscaling.enabled }}
{{- if not $partitions }}
{{- fail "meterstream: autoscaling needs kafka.partitions (the partition count of config.kafka.topics, e.g. kafka-topics.sh --describe): more consumers than partitions sit idle" }}
{{- end }}
{{- $max := $v.autoscaling.maxReplicas | int }}
{{- if gt ($v.autoscaling.minReplicas | int) $max }}
{{- fail (printf "meterstream: autoscaling.minReplicas (%d) is greater than autoscaling.maxReplicas (%d)" ($v.autoscaling.minReplicas | int) $max) }}
{{- end }}
{{- if and (eq $v.autoscaling.type "hpa") (lt ($v.autoscaling.minReplicas | int) 1) }}
{{- fail "meterstream: an HPA cannot scale to zero: set autoscaling.minReplicas to 1 or more, or use autoscaling.type=keda" }}
{{- end }}
{{- if and (eq $v.autoscaling.type "hpa") (not (or $v.autoscaling.hpa.targetCPUUtilizationPercentage $v.autoscaling.hpa.targetMemoryUtilizationPercentage)) }}
{{- fail "meterstream: autoscaling.type=hpa needs autoscaling.hpa.targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if gt (mul $max $workers) $partitions }}
{{- fail (printf "meterstream: autoscaling.maxReplicas (%d) x workers (%d) = %d consumers exceeds kafka.partitions (%d): the extra consumers would sit idle; lower autoscaling.maxReplicas to at most %d" $max $workers (mul $max $workers) $partitions (div $partitions $workers)) }}
{{- end }}
{{- else if $partitions }}
{{- $replicas := $v.replicaCount | int }}
{{- if gt (mul $replicas $workers) $partitions }}
{{- fail (printf "meterstream: replicaCount (%d) x workers (%d) = %d consumers exceeds kafka.partitions (%d): the extra consumers would sit idle; lower replicaCount to at most %d" $replicas $workers (mul $replicas $workers) $partitions (div $partitions $workers)) }}
{{- end }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (not (kindIs "invalid" $v.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable)) }}
{{- fail "meterstream: set either podDisruptionBudget.minAvailable or podDisruptionBudget.maxUnavailable (the other to null)" }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (not $v.service.enabled) }}
{{- fail "meterstream: serviceMonitor.enabled needs service.enabled (the ServiceMonitor scrapes the Service)" }}
{{- end }}
{{- end }}
