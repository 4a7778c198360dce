#!/usr/bin/env bash
# Node mode vs sidecar mode, memory: one `outrider-proxy --mode node` serving N workloads
# against N sidecars (one `outrider-proxy` per workload), for each N given, with the same
# control plane and the same config (one Service per workload). Prints a markdown table of
# resident set sizes (VmRSS, after every workload has its certificate and config).
#
#   sudo benches/ambient/memory.sh [N...]        # default: 1 10 50
#
# Needs root (network namespaces, iptables in them) and release binaries
# (`cargo build --release -p outrider-proxy -p outrider-control-plane --bins`); PROXY and
# OUTRIDER override their paths. Everything runs in namespaces named `obench-*`, removed at exit.
set -euo pipefail

PROXY=${PROXY:-target/release/outrider-proxy}
OUTRIDER=${OUTRIDER:-target/release/outrider}
COUNTS=("${@:-1 10 50}")
# shellcheck disable=SC2206
COUNTS=(${COUNTS[*]})
TOKEN=bench-api-token
DIR=$(mktemp -d /tmp/obench.XXXXXX)
HOST=obench-host-$$
PIDS=()
NSES=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in "${NSES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    ip netns del "$HOST" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
for b in "$PROXY" "$OUTRIDER"; do [ -x "$b" ] || { echo "no $b: build the release binaries first" >&2; exit 2; }; done

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
inhost() { ip netns exec "$HOST" "$@"; }
cli() { inhost "$OUTRIDER" "$@" --server https://127.0.0.1:15014 --token "$TOKEN" --ca-root "$DIR/cp/root.pem"; }
# Poll `cmd` (a shell snippet) until it succeeds, at most $2 seconds.
until_ok() {
    local end=$((SECONDS + $2))
    until eval "$1" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || { echo "timed out: $1" >&2; exit 1; }
        sleep 0.2
    done
}

ip netns add "$HOST"
inhost ip link set lo up
ip netns exec "$HOST" "$OUTRIDER" control-plane --xds-port 15010 --api-port 15014 --tls --api-token "$TOKEN" \
    --data-dir "$DIR/cp" >"$DIR/cp.log" 2>&1 &
PIDS+=($!)
until_ok "grep -q listening $DIR/cp.log" 30

max=0
for n in "${COUNTS[@]}"; do [ "$n" -gt "$max" ] && max=$n; done
{
    for i in $(seq 1 "$max"); do
        printf -- '---\napiVersion: outrider.io/v1\nkind: Service\nmetadata: {name: svc%d}\nspec: {protocol: http, port: 8080}\n' "$i"
    done
} >"$DIR/policy.yaml"
cli apply -f "$DIR/policy.yaml" >/dev/null
for i in $(seq 1 "$max"); do
    ns=obench-w$$-$i
    ip netns add "$ns"
    NSES+=("$ns")
    ip -n "$ns" link set lo up
    cli token create --namespace default -q --service-account "w$i" >"$DIR/w$i.token"
done
cli token create --namespace outrider-system -q --service-account node-bench >"$DIR/node.token"

echo "| workloads | node mode: 1 proxy (MiB) | sidecar mode: N proxies, total (MiB) | per sidecar (MiB) | goal 12 + 0.5·N (MiB) |"
echo "|---|---|---|---|---|"
for n in "${COUNTS[@]}"; do
    # Node mode.
    sock=$DIR/node-$n.sock
    # `ip netns exec` execs the proxy: $! is the proxy's PID.
    ip netns exec "$HOST" "$PROXY" --mode node --xds-address https://127.0.0.1:15010 --ca-address https://127.0.0.1:15014 \
        --ca-root "$DIR/cp/root.pem" --identity-token "$DIR/node.token" --namespace outrider-system \
        --service-account node-bench --node-socket "$sock" --node-state "$DIR/node-$n.state" \
        --node-id "node-bench-$n" --admin-port 0 --metrics-port 0 --health-port 0 --workers 1 \
        --log-format json >"$DIR/node-$n.log" 2>&1 &
    node=$!
    PIDS+=("$node")
    for i in $(seq 1 "$n"); do
        until_ok "inhost $PROXY node --socket $sock add-workload --netns /var/run/netns/obench-w$$-$i \
            --namespace default --service-account w$i --service svc$i --address 10.99.$((i / 250)).$((i % 250 + 1))" 60
    done
    until_ok "[ \$(inhost $PROXY node --socket $sock list | grep -o '\"ready\": *true' | wc -l) -eq $n ]" 120
    node_kb=$(rss_kb "$node")
    kill "$node"
    wait "$node" 2>/dev/null || true

    # Sidecar mode: one proxy per workload (in the host namespace, ephemeral ports).
    side=()
    for i in $(seq 1 "$n"); do
        ip netns exec "$HOST" "$PROXY" --xds-address https://127.0.0.1:15010 --ca-address https://127.0.0.1:15014 \
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
    for p in "${side[@]}"; do kill "$p"; done
    wait "${side[@]}" 2>/dev/null || true

    awk -v n="$n" -v a="$node_kb" -v b="$side_kb" 'BEGIN {
        printf "| %d | %.1f | %.1f | %.1f | %.1f |\n", n, a / 1024, b / 1024, b / 1024 / n, 12 + 0.5 * n }'
done
