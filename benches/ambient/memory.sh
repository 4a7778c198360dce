#!/usr/bin/env bash
# Node mode vs sidecar mode, memory: one `outrider-proxy --mode node` serving N workloads
# against N sidecars (one `outrider-proxy` per workload), for each N given, with the same
# control plane and the same config (one Service per workload). Prints a markdown table of
# resident set sizes (VmRSS) twice: at readiness (every workload has its certificate and
# config) and SETTLE seconds later (default 15: after the proxies' first heap release, which
# runs every 10 s by default, `--heap-release-interval`; the figure a long-running proxy keeps).
#
#   sudo benches/ambient/memory.sh [N...]        # default: 1 10 50
#   sudo SETTLE=0 benches/ambient/memory.sh 1   # readiness only
#
# Needs root (network namespaces, iptables in them) and release binaries
# (`cargo build --release -p outrider-proxy --bins`, then `-p outrider-control-plane`); PROXY and
# OUTRIDER override their paths. Everything runs in namespaces named `obench-*`, removed at exit.
set -euo pipefail

COUNTS=("${@:-1 10 50}")
# shellcheck disable=SC2206
COUNTS=(${COUNTS[*]})
DIR=$(mktemp -d /tmp/obench.XXXXXX)
CP_NS=obench-host-$$
# shellcheck source=benches/ambient/lib.sh
. "$(dirname "$0")/lib.sh"
trap cleanup EXIT
preflight

inhost() { ip netns exec "$CP_NS" "$@"; }
new_ns "$CP_NS"
start_control_plane

max=0
for n in "${COUNTS[@]}"; do [ "$n" -gt "$max" ] && max=$n; done
{
    for i in $(seq 1 "$max"); do
        printf -- '---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: svc%d}\nspec: {protocol: http, port: 8080}\n' "$i"
    done
} >"$DIR/policy.yaml"
cli apply -f "$DIR/policy.yaml" >/dev/null
for i in $(seq 1 "$max"); do
    new_ns "obench-w$$-$i"
    cli token create --namespace default -q --service-account "w$i" >"$DIR/w$i.token"
done
cli token create --namespace outrider-system -q --service-account node-bench >"$DIR/node.token"

SETTLE=${SETTLE:-15}
echo "| workloads | node mode: 1 proxy, ready / settled (MiB) | sidecar mode: N proxies, total, ready / settled (MiB) | per sidecar, settled (MiB) | goal 12 + 0.5·N (MB = MiB × 1.048576) |"
echo "|---|---|---|---|---|"
for n in "${COUNTS[@]}"; do
    # Node mode.
    start_node_proxy "$n" "$DIR/node.token" 1
    node=$NODE_PID
    for i in $(seq 1 "$n"); do
        until_ok "node_cli add-workload --netns /var/run/netns/obench-w$$-$i \
            --namespace default --service-account w$i --service svc$i --address 10.99.$((i / 250)).$((i % 250 + 1))" 60
    done
    wait_node_ready "$n"
    node_kb=$(rss_kb "$node")
    sleep "$SETTLE"
    node_settled_kb=$(rss_kb "$node")
    kill "$node"
    wait "$node" 2>/dev/null || true

    # Sidecar mode: one proxy per workload (in the host namespace, ephemeral ports).
    side=()
    for i in $(seq 1 "$n"); do
        ip netns exec "$CP_NS" "$PROXY" --xds-address https://127.0.0.1:15010 --ca-address https://127.0.0.1:15014 \
            --ca-root "$DIR/cp/root.pem" --identity-token "$DIR/w$i.token" --namespace default \
            --service-account "w$i" --service "svc$i" --app-port 8080 --node-id "side-$n-$i" \
            --outbound-port 0 --inbound-port 0 --admin-port 0 --metrics-port 0 \
            --health-port 0 --inbound-bind 127.0.0.1 --workers 1 --log-format json >"$DIR/side-$n-$i.log" 2>&1 &
        side+=($!)
        PIDS+=($!)
    done
    # Ready: each has its certificate and config (its health port answers 200 then).
    for i in $(seq 1 "$n"); do
        until_ok "grep -q '\"listening\"' $DIR/side-$n-$i.log" 60
        port=$(grep -o '"health":"[^"]*"' "$DIR/side-$n-$i.log" | head -1 | sed 's/.*:\([0-9]*\)"$/\1/')
        until_ok "inhost curl -sf http://127.0.0.1:$port/healthz/ready" 120
    done
    side_kb=0
    for p in "${side[@]}"; do side_kb=$((side_kb + $(rss_kb "$p"))); done
    sleep "$SETTLE"
    side_settled_kb=0
    for p in "${side[@]}"; do side_settled_kb=$((side_settled_kb + $(rss_kb "$p"))); done
    for p in "${side[@]}"; do kill "$p"; done
    wait "${side[@]}" 2>/dev/null || true

    awk -v n="$n" -v a="$node_kb" -v as="$node_settled_kb" -v b="$side_kb" -v bs="$side_settled_kb" 'BEGIN {
        printf "| %d | %.1f / %.1f | %.1f / %.1f | %.1f | %.1f MB = %.2f MiB |\n", n, a / 1024, as / 1024,
            b / 1024, bs / 1024, bs / 1024 / n, 12 + 0.5 * n, (12 + 0.5 * n) / 1.048576 }'
done
