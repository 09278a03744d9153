#!/usr/bin/env bash
# Remove nldns from the current cluster.
#
#   deploy/uninstall.sh [--timeout SECONDS] [--image IMAGE] [--pause-image IMAGE]
#                       [--skip-cleanup]
#
# In this order:
#   1. deletes the nldns DaemonSet and waits until its pods are gone. Each agent
#      detaches as it stops; TCX and cgroup links die with the process anyway, so from
#      here on pods on those nodes talk to kube-dns directly;
#   2. runs `nldns cleanup` once per node (a short-lived DaemonSet, nldns-cleanup) to
#      remove legacy netlink TC filters that a crashed agent may have left on kernels
#      without TCX (< 6.6). Such leftovers are already pass-through (heartbeat guard),
#      so this is tidying, not repair; on TCX nodes it finds nothing. --skip-cleanup
#      skips it. The image is the one the DaemonSet ran (or --image); the cleanup
#      pods' second container is registry.k8s.io/pause (--pause-image for mirrors);
#   3. deletes the ConfigMap and the ServiceAccount;
#   4. deletes the kube-dns-uncached Service LAST: until every agent is gone, some
#      agent may still be forwarding to it.
#
# KUBECTL may name another kubectl, with arguments: KUBECTL="kubectl --context prod".
set -euo pipefail

NS=kube-system
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
read -r -a kubectl_cmd <<<"${KUBECTL:-kubectl}"

kc() { "${kubectl_cmd[@]}" "$@"; }
log() { printf 'uninstall.sh: %s\n' "$*" >&2; }
die() { printf 'uninstall.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

timeout=180
image=""
pause_image=""
cleanup=1
# Seconds between two looks at the remaining pods (the tests set 0).
poll=${NLDNS_UNINSTALL_POLL:-2}

while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) [ $# -ge 2 ] || die "$1 needs a value"; timeout=$2; shift 2 ;;
        --timeout=*) timeout=${1#*=}; shift ;;
        --image) [ $# -ge 2 ] || die "$1 needs a value"; image=$2; shift 2 ;;
        --image=*) image=${1#*=}; shift ;;
        --pause-image) [ $# -ge 2 ] || die "$1 needs a value"; pause_image=$2; shift 2 ;;
        --pause-image=*) pause_image=${1#*=}; shift ;;
        --skip-cleanup) cleanup=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
case "$timeout" in
    '' | *[!0-9]*) die "--timeout takes whole seconds, got '$timeout'" ;;
esac

# Waits until no pod matches label selector $1; fails after $timeout seconds.
wait_pods_gone() {
    local selector=$1 deadline=$((SECONDS + timeout)) pods
    while :; do
        pods=$(kc -n "$NS" get pods -l "$selector" -o name)
        [ -n "$pods" ] || return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "still running after ${timeout}s: $(tr '\n' ' ' <<<"$pods")"
            return 1
        fi
        sleep "$poll"
    done
}

# A kustomize `images:` entry replacing image NAME with IMAGE (name[:tag] or name@digest;
# a ':' before the last '/' is a registry port, not a tag).
image_entry() {
    local name=$1 img=$2
    printf '  - name: %s\n' "$name"
    case "$img" in
        *@*) printf '    newName: %s\n    digest: %s\n' "${img%%@*}" "${img#*@}" ;;
        *)
            if [[ "${img##*/}" == *:* ]]; then
                printf '    newName: %s\n    newTag: "%s"\n' "${img%:*}" "${img##*:}"
            else
                printf '    newName: %s\n' "$img"
            fi
            ;;
    esac
}

# --- 1. the agents --------------------------------------------------------------------
if [ -z "$image" ]; then
    image=$(kc -n "$NS" get daemonset nldns -o jsonpath='{.spec.template.spec.containers[0].image}' 2>/dev/null || true)
fi
kc -n "$NS" delete daemonset nldns --ignore-not-found --cascade=foreground --wait=true --timeout="${timeout}s"
wait_pods_gone k8s-app=nldns || die "nldns pods did not stop within ${timeout}s; nothing else was removed (re-run when they are gone)"
log "all nldns agents stopped"

# --- 2. leftovers of legacy netlink mode ------------------------------------------------
status=0
if [ "$cleanup" = 1 ]; then
    if [ -z "$image" ]; then
        image=nldns:latest
        log "no DaemonSet to take the image from; cleanup uses $image (override with --image)"
    fi
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/nldns-uninstall.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cp "$here/cleanup/daemonset.yaml" "$tmp/daemonset.yaml"
    {
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n'
        printf 'resources:\n  - daemonset.yaml\nimages:\n'
        image_entry nldns "$image"
        [ -z "$pause_image" ] || image_entry registry.k8s.io/pause "$pause_image"
    } >"$tmp/kustomization.yaml"
    kc apply -k "$tmp"
    # Ready means the init container (`nldns cleanup`) succeeded on that node.
    if ! kc -n "$NS" rollout status daemonset/nldns-cleanup --timeout="${timeout}s"; then
        log "warning: nldns cleanup did not finish on every node within ${timeout}s:"
        kc -n "$NS" get pods -l k8s-app=nldns-cleanup -o wide >&2 || true
        log "leftover filters there are pass-through (heartbeat guard) and go with the next reboot"
        status=1
    fi
    kc -n "$NS" delete daemonset nldns-cleanup --ignore-not-found --wait=true --timeout="${timeout}s"
    wait_pods_gone k8s-app=nldns-cleanup || status=1
fi

# --- 3. configuration -------------------------------------------------------------------
kc -n "$NS" delete configmap nldns --ignore-not-found
kc -n "$NS" delete serviceaccount nldns --ignore-not-found

# --- 4. the upstream Service, last --------------------------------------------------------
kc -n "$NS" delete service kube-dns-uncached --ignore-not-found
log "done"
exit "$status"
