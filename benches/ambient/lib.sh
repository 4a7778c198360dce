# Shared by benches/ambient/*.sh (sourced, not run): binaries, clean-up, polling, the control
# plane and a node proxy. The caller sets DIR (a scratch directory) and CP_NS (the network
# namespace the control plane runs in) before calling start_control_plane.
# shellcheck shell=bash

PROXY=${PROXY:-target/release/outrider-proxy}
OUTRIDER=${OUTRIDER:-target/release/outrider}
TOKEN=bench-api-token
PIDS=()
NSES=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in "${NSES[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    rm -rf "$DIR"
}

# Root and the release binaries (or PROXY / OUTRIDER), else exit 2.
preflight() {
    [ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
    for b in "$PROXY" "$OUTRIDER"; do
        [ -x "$b" ] || { echo "no $b: build the release binaries first" >&2; exit 2; }
    done
}

# A network namespace with lo up, removed at exit.
new_ns() {
    ip netns add "$1"
    NSES+=("$1")
    ip -n "$1" link set lo up
}

# VmRSS of an outrider-proxy process; fails for any other process (a PID of the wrong process,
# e.g. a subshell's, would measure the wrong thing).
rss_kb() {
    [ "$(cat "/proc/$1/comm")" = outrider-proxy ] || { echo "PID $1 is not outrider-proxy" >&2; exit 1; }
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# utime + stime of the given PIDs, in clock ticks.
cpu_ticks() {
    local t=0 p
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}

cli() {
    ip netns exec "$CP_NS" "$OUTRIDER" "$@" --server https://127.0.0.1:15014 --token "$TOKEN" \
        --ca-root "$DIR/cp/root.pem"
}

# Poll `cmd` (a shell snippet) until it succeeds, at most $2 seconds.
until_ok() {
    local end=$((SECONDS + $2))
    until eval "$1" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || { echo "timed out: $1" >&2; exit 1; }
        sleep 0.2
    done
}

# The control plane (--tls) in $CP_NS; extra arguments are passed on (--tls-san, --bind).
start_control_plane() {
    ip netns exec "$CP_NS" "$OUTRIDER" control-plane --xds-port 15010 --api-port 15014 --tls \
        --api-token "$TOKEN" --data-dir "$DIR/cp" "$@" >"$DIR/cp.log" 2>&1 &
    PIDS+=($!)
    until_ok "grep -q listening $DIR/cp.log" 60
}

# A node proxy in $CP_NS: start_node_proxy NAME TOKEN_FILE WORKERS [command prefix, e.g.
# taskset -c 0]; sets NODE_PID and NODE_SOCK. `ip netns exec` execs its command, so $! is the
# proxy's PID (also through taskset). Access log off, as for the benches' sidecars.
start_node_proxy() {
    local name=$1 token=$2 workers=$3
    shift 3
    NODE_SOCK=$DIR/node-$name.sock
    ip netns exec "$CP_NS" "$@" "$PROXY" --mode node --xds-address https://127.0.0.1:15010 \
        --ca-address https://127.0.0.1:15014 --ca-root "$DIR/cp/root.pem" --identity-token "$token" \
        --namespace outrider-system --service-account node-bench --node-socket "$NODE_SOCK" \
        --node-state "$DIR/node-$name.state" --node-id "node-bench-$name" --admin-port 0 \
        --metrics-port 0 --health-port 0 --workers "$workers" --access-log off --log-format json \
        >"$DIR/node-$name.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
}

node_cli() { ip netns exec "$CP_NS" "$PROXY" node --socket "$NODE_SOCK" "$@"; }

# Wait until the node proxy serves $1 workloads, each with its certificate.
wait_node_ready() {
    until_ok "[ \$(node_cli list | grep -o '\"ready\": *true' | wc -l) -eq $1 ]" 120
}
