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
{{- $p := .Values.config.prefetch -}}
{{- if not (and $p.enabled (eq (int $p.amount) 5) (eq (toString $p.percentage) "10%")) -}}
{{ fail (printf "config.prefetch: this nldns version always prefetches, with fixed settings (enabled: true, amount: 5, percentage: 10%%); its --config cannot change them yet, so %s would be ignored: remove config.prefetch from your values" (toJson $p)) }}
{{- end -}}
{{- $s := .Values.config.serveStale -}}
{{- if not (and $s.enabled (eq (toString $s.duration) "1h")) -}}
{{ fail (printf "config.serveStale: this nldns version always serves stale answers for up to 1h (enabled: true, duration: 1h); its --config cannot change that yet, so %s would be ignored: remove config.serveStale from your values" (toJson $s)) }}
{{- end -}}
{{- end -}}
