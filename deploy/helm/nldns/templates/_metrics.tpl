{{/*
Every metric name the PrometheusRule uses, in this one place (deploy-checks fails when
an alert uses a name missing here, or a name docs/operations.md does not document).

Today the agent exports nldns_* series only (docs/operations.md "Metrics reference").
Where a CoreDNS series will be the natural choice once the agent serves it, the comment
names it: switching is editing the value here (and the label names in
templates/prometheusrule.yaml where they differ).
*/}}
{{- define "nldns.metrics" -}}
# answers by rcode/qtype/protocol; CoreDNS: coredns_dns_responses_total{rcode} (and
# coredns_dns_requests_total for the request rate)
requests: nldns_requests_total
# CoreDNS: coredns_cache_hits_total / coredns_cache_misses_total
cacheHits: nldns_cache_hits_total
cacheMisses: nldns_cache_misses_total
# a histogram; the p99 alert reads its _bucket series. Today: upstream exchanges (misses
# only). CoreDNS: coredns_dns_request_duration_seconds, the client-side latency of
# every answer, hits included: the better p99 signal when it exists.
latency: nldns_upstream_latency_seconds
# failed upstream exchanges per upstream; CoreDNS: coredns_forward_healthcheck_broken_total
# (all upstreams down) and coredns_proxy_request_duration_seconds{rcode}
upstreamErrors: nldns_upstream_errors_total
# the datapath's fail-open counters (no CoreDNS equivalent: CoreDNS does not intercept)
failOpenPasses: nldns_datapath_fail_open_passes_total
sockFailOpenPasses: nldns_datapath_sock_fail_open_passes_total
agentGonePasses: nldns_datapath_agent_gone_passes_total
sockAgentGonePasses: nldns_datapath_sock_agent_gone_passes_total
# kube-state-metrics
daemonSetUnavailable: kube_daemonset_status_number_unavailable
# Prometheus's own scrape health
up: up
{{- end -}}
