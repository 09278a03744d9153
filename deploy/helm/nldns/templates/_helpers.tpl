{{/*
Names are fixed, as in the kustomize base (deploy/): one agent per node makes a second
release pointless, deploy/uninstall.sh and `kubectl nldns status` find the pods by
k8s-app=nldns, and the agent reads the upstream's ClusterIP from the service-link
variable that the Service name kube-dns-uncached gives (KUBE_DNS_UNCACHED_SERVICE_HOST).
*/}}

{{/* Labels Helm-managed objects carry besides the base's (deploy-checks strips exactly these). */}}
{{- define "nldns.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "nldns.labels" -}}
app.kubernetes.io/name: nldns
{{ include "nldns.chartLabels" . }}
{{- end -}}

{{- define "nldns.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "nldns.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}nldns{{- else -}}{{ .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* The PromQL matchers of the agents' series (see prometheusRule.selector). */}}
{{- define "nldns.selector" -}}
{{- if .Values.prometheusRule.selector -}}
{{ .Values.prometheusRule.selector }}
{{- else if and .Values.serviceMonitor.enabled (eq .Values.serviceMonitor.kind "PodMonitor") -}}
job="{{ default .Release.Namespace .Values.serviceMonitor.prometheusNamespace }}/nldns"
{{- else if .Values.serviceMonitor.enabled -}}
job="nldns-metrics"
{{- else -}}
{{ fail "prometheusRule.selector: with serviceMonitor.enabled=false the chart cannot know the scrape job of the agents; set the PromQL matchers that select them, e.g. prometheusRule.selector='job=\"kubernetes-pods\",app_kubernetes_io_name=\"nldns\"'" }}
{{- end -}}
{{- end -}}

{{/*
Checks that values.schema.json cannot express, with messages that say what to do.
Included by the DaemonSet template, so every rendering runs them.
*/}}
{{- define "nldns.validate" -}}
{{- if ne .Release.Namespace "kube-system" -}}
{{ fail (printf "nldns must be installed into kube-system (helm install -n kube-system), not %q: kube-dns-uncached must sit next to the kube-dns pods it selects, and the agent reads the kube-dns and kube-dns-uncached ClusterIPs from the service-link variables of that namespace" .Release.Namespace) }}
{{- end -}}
{{- if not .Values.serviceAccount.create -}}
{{- if not .Values.serviceAccount.name -}}
{{ fail "serviceAccount.name: with serviceAccount.create=false, name an existing ServiceAccount in kube-system" }}
{{- end -}}
{{- end -}}
{{- $s := .Values.config.serveStale -}}
{{- if gt (include "nldns.seconds" $s.duration | int) 604800 -}}
{{ fail (printf "config.serveStale.duration: %s is above the agent's limit of 168h (a week)" $s.duration) }}
{{- end -}}
{{- end -}}

{{/*
A duration of the schema's form (digits and one of s, m, h) in seconds.
*/}}
{{- define "nldns.seconds" -}}
{{- $n := regexFind "^[0-9]+" . | int -}}
{{- if hasSuffix "h" . -}}{{ mul $n 3600 }}
{{- else if hasSuffix "m" . -}}{{ mul $n 60 }}
{{- else -}}{{ $n }}
{{- end -}}
{{- end -}}

{{/*
The agent's `cache` section: config.cache, plus config.prefetch and config.serveStale
when they differ from the agent's defaults (so the default rendering stays the
kustomize base's ConfigMap).
*/}}
{{- define "nldns.cacheConfig" -}}
{{- $cache := deepCopy (.Values.config.cache | default dict) -}}
{{- $p := .Values.config.prefetch -}}
{{- $percent := trimSuffix "%" (toString $p.percentage) | int -}}
{{- if not (and $p.enabled (eq (int $p.amount) 5) (eq $percent 10)) -}}
{{- $_ := set $cache "prefetch" (dict "enabled" $p.enabled "minHits" (int $p.amount) "percent" $percent) -}}
{{- end -}}
{{- $s := .Values.config.serveStale -}}
{{- $secs := include "nldns.seconds" $s.duration | int -}}
{{- if not (and $s.enabled (eq $secs 3600)) -}}
{{- $_ := set $cache "serveStale" (dict "enabled" $s.enabled "maxSeconds" $secs) -}}
{{- end -}}
{{- toJson $cache -}}
{{- end -}}
