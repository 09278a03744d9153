#!/usr/bin/env bash
# Install (or upgrade) nldns, the eBPF node-local DNS cache, into the current cluster.
#
#   deploy/install.sh [--cluster-domain DOMAIN] [--image IMAGE] [--legacy-kernel]
#                     [--timeout DURATION] [--no-wait] [--dry-run]
#
# What it does, in this order:
#   1. reads the kube-dns Service's ClusterIP(s) (both families on dual-stack clusters):
#      these are the addresses nldns intercepts; the kubelet's --cluster-dns already
#      points pods at them, so nothing on the nodes changes (works on GKE, EKS, AKS...);
#   2. finds the cluster domain: --cluster-domain, else the kubelet's clusterDomain
#      (node proxy /configz of one node), else the `kubernetes` zone of the CoreDNS
#      Corefile (ConfigMap kube-system/coredns), else cluster.local;
#   3. creates/updates the kube-dns-uncached Service (same backends, second ClusterIP)
#      and reads its ClusterIP(s): the cache's upstream;
#   4. renders a kustomize overlay of deploy/ in a temporary directory with those
#      values (and the image, and the legacy-kernel capabilities if asked) and applies it;
#   5. waits for the DaemonSet rollout (unless --no-wait).
# Re-running it is an upgrade: the DaemonSet rolls node by node with maxSurge 1.
#
# KUBECTL may name another kubectl, with arguments: KUBECTL="kubectl --context prod".
set -euo pipefail

NS=kube-system
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a kubectl_cmd <<<"${KUBECTL:-kubectl}"

kc() { "${kubectl_cmd[@]}" "$@"; }
log() { printf 'install.sh: %s\n' "$*" >&2; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

cluster_domain=""
image=""
legacy_kernel=0
timeout=300s
wait_rollout=1
dry_run=0

while [ $# -gt 0 ]; do
    case "$1" in
        --cluster-domain) [ $# -ge 2 ] || die "$1 needs a value"; cluster_domain=$2; shift 2 ;;
        --cluster-domain=*) cluster_domain=${1#*=}; shift ;;
        --image) [ $# -ge 2 ] || die "$1 needs a value"; image=$2; shift 2 ;;
        --image=*) image=${1#*=}; shift ;;
        --timeout) [ $# -ge 2 ] || die "$1 needs a value"; timeout=$2; shift 2 ;;
        --timeout=*) timeout=${1#*=}; shift ;;
        --legacy-kernel) legacy_kernel=1; shift ;;
        --no-wait) wait_rollout=0; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# '["10.96.0.10","fd00:10:96::a"]' (jsonpath of a list) -> '10.96.0.10,fd00:10:96::a'
json_list_to_csv() {
    local s=$1
    s=${s#[}
    s=${s%]}
    s=${s//\"/}
    s=${s// /}
    printf '%s' "$s"
}

# The ClusterIP(s) of Service $1 in kube-system, comma-separated, primary family first.
# Fails (with a message) when the Service is missing or headless.
service_ips() {
    local svc=$1 out ips ip
    out=$(kc -n "$NS" get service "$svc" -o jsonpath='{.spec.clusterIPs}') ||
        die "cannot read Service $NS/$svc"
    ips=$(json_list_to_csv "$out")
    if [ -z "$ips" ]; then
        # Servers older than 1.20 have no .spec.clusterIPs.
        ips=$(kc -n "$NS" get service "$svc" -o jsonpath='{.spec.clusterIP}') ||
            die "cannot read Service $NS/$svc"
    fi
    [ -n "$ips" ] || die "Service $NS/$svc has no ClusterIP"
    IFS=, read -r -a list <<<"$ips"
    for ip in "${list[@]}"; do
        case "$ip" in
            None) die "Service $NS/$svc is headless (clusterIP: None): nothing to intercept" ;;
            *[!0-9a-fA-F:.]* | "") die "Service $NS/$svc: unexpected ClusterIP '$ip'" ;;
        esac
    done
    printf '%s' "$ips"
}

# The first non-reverse zone of the `kubernetes` plugin in a Corefile on stdin.
corefile_domain() {
    awk '$1 == "kubernetes" {
            for (i = 2; i <= NF; i++) {
                if ($i == "{") break
                z = $i; sub(/\.$/, "", z)
                if (z !~ /\.arpa$/ && z != "") { print z; exit }
            }
        }'
}

image_kustomize_entry() {
    # Splits IMAGE into kustomize's newName / newTag / digest.
    local img=$1 name tag="" digest=""
    case "$img" in
        *@*) name=${img%%@*}; digest=${img#*@} ;;
        *)
            name=$img
            # A ':' after the last '/' is a tag (a ':' before it is a registry port).
            if [[ "${img##*/}" == *:* ]]; then
                tag=${img##*:}
                name=${img%:*}
            fi
            ;;
    esac
    printf '  - name: nldns\n    newName: %s\n' "$name"
    [ -z "$tag" ] || printf '    newTag: "%s"\n' "$tag"
    [ -z "$digest" ] || printf '    digest: %s\n' "$digest"
}

# --- 1. what to intercept ---------------------------------------------------------
service_ip=$(service_ips kube-dns)
log "kube-dns ClusterIP(s): $service_ip"
n_families=$(awk -F, '{print NF}' <<<"$service_ip")

# --- 2. cluster domain --------------------------------------------------------------
if [ -n "$cluster_domain" ]; then
    domain_source="--cluster-domain"
else
    # The kubelet's own setting is what pods get in their resolv.conf search list. It is
    # readable through the API server's node proxy (needs nodes/proxy rights; may fail).
    node=$(kc get nodes -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
    if [ -n "$node" ]; then
        configz=$(kc get --raw "/api/v1/nodes/$node/proxy/configz" 2>/dev/null || true)
        cluster_domain=$(sed -n 's/.*"clusterDomain"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$configz" | head -n 1)
        domain_source="kubelet configuration of node $node"
    fi
    if [ -z "$cluster_domain" ]; then
        corefile=$(kc -n "$NS" get configmap coredns -o jsonpath='{.data.Corefile}' 2>/dev/null || true)
        cluster_domain=$(corefile_domain <<<"$corefile")
        domain_source="ConfigMap $NS/coredns"
    fi
    if [ -z "$cluster_domain" ]; then
        cluster_domain=cluster.local
        domain_source="default (neither the kubelet configuration nor a CoreDNS Corefile was readable; kube-dns clusters such as GKE use cluster.local)"
    fi
fi
cluster_domain=${cluster_domain%.}
case "$cluster_domain" in
    "" | *[!a-zA-Z0-9.-]*) die "invalid cluster domain '$cluster_domain'" ;;
esac
log "cluster domain: $cluster_domain (from $domain_source)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nldns-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# A strategic-merge patch making kube-dns-uncached dual-stack like kube-dns.
write_dual_stack_patch() {
    cat >"$1" <<'EOF'
apiVersion: v1
kind: Service
metadata:
  name: kube-dns-uncached
  namespace: kube-system
spec:
  ipFamilyPolicy: PreferDualStack
EOF
}

# --- 3. the uncached Service (the cache's upstream) ---------------------------------
mkdir -p "$tmp/uncached"
cp "$here/service-uncached.yaml" "$tmp/uncached/service-uncached.yaml"
{
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - service-uncached.yaml\n'
    if [ "$n_families" -gt 1 ]; then
        write_dual_stack_patch "$tmp/uncached/dual-stack.yaml"
        printf 'patches:\n  - path: dual-stack.yaml\n'
    fi
} >"$tmp/uncached/kustomization.yaml"

if [ "$dry_run" = 1 ]; then
    upstream=$(service_ips kube-dns-uncached 2>/dev/null || echo "KUBE-DNS-UNCACHED-CLUSTER-IP")
else
    kc apply -k "$tmp/uncached"
    upstream=$(service_ips kube-dns-uncached)
fi
log "kube-dns-uncached ClusterIP(s) (upstream): $upstream"
case ",$service_ip," in
    *",${upstream%%,*},"*) die "kube-dns-uncached has the same ClusterIP as kube-dns: refusing" ;;
esac
if [ "$n_families" -gt 1 ] && [ "$(awk -F, '{print NF}' <<<"$upstream")" -lt 2 ]; then
    log "warning: kube-dns is dual-stack but kube-dns-uncached got one family; the other family's queries are cached with upstream $upstream"
fi

# --- 4. render the overlay and apply ------------------------------------------------
# The base is copied in (as overlay/base): kustomize takes neither an absolute path
# nor, portably, a relative one across the temporary directory.
ov="$tmp/overlay"
mkdir -p "$ov/base"
cp "$here"/*.yaml "$ov/base/"
cat >"$ov/agent-env.yaml" <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: nldns
  namespace: kube-system
spec:
  template:
    spec:
      containers:
        - name: nldns
          env:
            - name: NLDNS_SERVICE_IP
              value: "$service_ip"
            - name: NLDNS_UPSTREAM
              value: "$upstream"
            - name: NLDNS_CLUSTER_DOMAIN
              value: "$cluster_domain"
EOF
{
    printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
    printf 'resources:\n  - base\n'
    printf 'patches:\n  - path: agent-env.yaml\n'
    if [ "$n_families" -gt 1 ]; then
        write_dual_stack_patch "$ov/dual-stack.yaml"
        printf '  - path: dual-stack.yaml\n'
    fi
    if [ "$legacy_kernel" = 1 ]; then
        cp "$here/patches/legacy-kernel.yaml" "$ov/legacy-kernel.yaml"
        printf '  - path: legacy-kernel.yaml\n    target:\n      kind: DaemonSet\n      name: nldns\n'
    fi
    if [ -n "$image" ]; then
        printf 'images:\n'
        image_kustomize_entry "$image"
    fi
} >"$ov/kustomization.yaml"

if [ "$dry_run" = 1 ]; then
    kc kustomize "$ov"
    exit 0
fi

kc apply -k "$ov"

# --- 5. wait ------------------------------------------------------------------------
if [ "$wait_rollout" = 1 ]; then
    kc -n "$NS" rollout status daemonset/nldns --timeout="$timeout" ||
        die "DaemonSet $NS/nldns did not roll out within $timeout; see: kubectl -n $NS get pods -l k8s-app=nldns -o wide"
fi
log "done: intercepting $service_ip, upstream $upstream, cluster domain $cluster_domain"
