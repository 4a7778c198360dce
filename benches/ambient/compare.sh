#!/usr/bin/env bash
# Node mode vs sidecar mode, CPU and latency: the same HTTP/1.1 traffic from a client workload
# to a server workload (each a network namespace on one bridge, the "node"), three ways:
#
#   direct   client ns ──────────────────────────────────────────────▶ server ns (nginx)
#   sidecar  client ns: app → its sidecar (iptables) ══ Outrider mTLS ══▶ server's sidecar → app
#   node     client ns: app → node proxy's listener in the client ns ══ HBONE ══▶ the same node
#            proxy's listener in the server ns → app (one node proxy serves both workloads)
#
# each for an L7 Service (protocol: http) and an L4 one (protocol: tcp), mtls: strict. Per run
# and path: a closed loop (wrk -t1, keep-alive, CPU per request of the proxies: both sidecars,
# or the node proxy, from /proc/PID/stat) and an open loop at RATE req/s (`loadtest
# --open-loop-to`, latency from each request's intended send time); added latency = the path's
# percentile minus the direct path's of the same run. Pinning: the proxies on core 0; nginx,
# wrk, the open-loop client and the control plane on core 1.
#
#   sudo benches/ambient/compare.sh [RUNS]       # default 3
#
# Environment: DURATION (s per measurement, 10), CONNECTIONS (wrk, 50), RATE (1000),
# OPEN_CONNECTIONS (32), NODE_WORKERS (the node proxy's --workers, 2: as many threads as the
# sidecar pair's two single-worker proxies, so that on a contended core the node proxy gets the
# same CPU share as the pair; with 1 it gets about half and falls behind), PERF (a
# directory: record `perf record -e cpu-clock` of the proxies during each meshed closed loop
# there), PROXY, OUTRIDER, LOADTEST (default target/release/...). Needs root,
# ip, iptables, nginx, wrk, taskset. Prints a markdown table per run and a summary (medians).
# Everything runs in namespaces named `obench-*`, removed at exit.
set -euo pipefail

RUNS=${1:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
RATE=${RATE:-1000}
OPEN_CONNECTIONS=${OPEN_CONNECTIONS:-32}
NODE_WORKERS=${NODE_WORKERS:-2}
PERF=${PERF:-}
LOADTEST=${LOADTEST:-target/release/loadtest}
DIR=$(mktemp -d /tmp/obench.XXXXXX)
CP_NS=obench-node-$$
# shellcheck source=benches/ambient/lib.sh
. "$(dirname "$0")/lib.sh"
trap cleanup EXIT
preflight
for t in nginx wrk taskset iptables; do command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 2; }; done
[ -x "$LOADTEST" ] || { echo "no $LOADTEST: cargo build --release -p outrider-benches" >&2; exit 2; }
PROXY=$(realpath "$PROXY")
OUTRIDER=$(realpath "$OUTRIDER")
LOADTEST=$(realpath "$LOADTEST")
CORES=$(nproc)
PROXY_CORE=0
LOAD_CORE=$((CORES > 1 ? 1 : 0))
GW=10.82.0.1
MARK=1337

# The node: a namespace with a bridge; the control plane and the node proxy run in it.
new_ns "$CP_NS"
ip -n "$CP_NS" link add br0 type bridge
ip -n "$CP_NS" addr add $GW/24 dev br0
ip -n "$CP_NS" link set br0 up
ip netns exec "$CP_NS" sysctl -qw net.ipv4.ip_forward=1

# A workload: workload NAME IP (a namespace on the bridge, default route via the bridge).
workload() {
    local ns=obench-$1-$$ i=${#NSES[@]}
    new_ns "$ns"
    ip -n "$CP_NS" link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n "$CP_NS" link set "v$i" master br0 up
    ip -n "$ns" addr add "$2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via $GW
}

# The app: nginx in a workload's namespace on ports 8080 (L7 Service) and 9000 (L4 Service),
# 1 kB responses, one worker, no logs.
app() {
    local ns=obench-$1-$$ conf=$DIR/nginx-$1.conf body
    body=$(head -c 1024 /dev/zero | tr '\0' x)
    mkdir -p "$DIR/nginx-$1"
    cat >"$conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $DIR/nginx-$1/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/nginx-$1/body;
    proxy_temp_path $DIR/nginx-$1/proxy;
    fastcgi_temp_path $DIR/nginx-$1/fastcgi;
    uwsgi_temp_path $DIR/nginx-$1/uwsgi;
    scgi_temp_path $DIR/nginx-$1/scgi;
    keepalive_requests 1000000;
    server {
        listen 8080 reuseport;
        listen 9000 reuseport;
        location / { default_type text/plain; return 200 "$body"; }
    }
}
EOF
    ip netns exec "$ns" taskset -c $LOAD_CORE nginx -c "$conf" -e stderr >"$DIR/nginx-$1.log" 2>&1 &
    PIDS+=($!)
}

workload direct-client 10.82.0.11
workload direct-server 10.82.0.12
workload sc-client 10.82.0.21
workload sc-http 10.82.0.22
workload sc-tcp 10.82.0.23
workload node-client 10.82.0.31
workload node-http 10.82.0.32
workload node-tcp 10.82.0.33
for a in direct-server sc-http sc-tcp node-http node-tcp; do app "$a"; done

start_control_plane --bind 0.0.0.0 --tls-san $GW
# The control plane's process is the last PID; pin it with the load.
taskset -a -cp $LOAD_CORE "${PIDS[-1]}" >/dev/null
cat >"$DIR/policy.yaml" <<EOF
apiVersion: outrider.io/v1
kind: Service
metadata: {name: sc-http}
spec: {protocol: http, port: 8080, addresses: ["10.96.1.10"], mtls: strict}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: sc-tcp}
spec: {protocol: tcp, port: 9000, addresses: ["10.96.1.11"], mtls: strict}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: node-http}
spec: {protocol: http, port: 8080, addresses: ["10.96.2.10"], mtls: strict}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: node-tcp}
spec: {protocol: tcp, port: 9000, addresses: ["10.96.2.11"], mtls: strict}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: bench-client}
spec: {protocol: http, port: 80}
EOF
cli apply -f "$DIR/policy.yaml" >/dev/null
for sa in sc-client sc-http sc-tcp; do
    cli token create --namespace default -q --service-account "$sa" >"$DIR/$sa.token"
done
cli token create --namespace outrider-system -q --service-account node-bench >"$DIR/node.token"

# Sidecar mode: a sidecar in each workload's namespace, with its interception rules.
SIDECARS=()
sidecar() { # sidecar WORKLOAD SERVICE [APP_PORT]
    local ns=obench-$1-$$ app=()
    [ -n "${3:-}" ] && app=(--app-port "$3" --advertise "$(ip -n "$ns" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1):$3")
    ip netns exec "$ns" taskset -c $PROXY_CORE "$PROXY" --xds-address https://$GW:15010 \
        --ca-address https://$GW:15014 --ca-root "$DIR/cp/root.pem" --identity-token "$DIR/$1.token" \
        --namespace default --service-account "$1" --service "$2" "${app[@]}" --socket-mark $MARK \
        --node-id "sidecar-$1" --admin-port 0 --metrics-port 0 --health-port 0 --access-log off \
        --log-format json --workers 1 >"$DIR/sidecar-$1.log" 2>&1 &
    SIDECARS+=($!)
    PIDS+=($!)
    ip netns exec "$ns" "$PROXY" iptables --apply --proxy-mark $MARK --outbound-port 15001 \
        --inbound-port 15006 --exclude-outbound-cidrs $GW/32 >/dev/null
}
sidecar sc-client bench-client
sidecar sc-http sc-http 8080
sidecar sc-tcp sc-tcp 9000

# Node mode: one node proxy serving the three node-* workloads.
start_node_proxy bench "$DIR/node.token" "$NODE_WORKERS" taskset -c $PROXY_CORE
until_ok "node_cli list" 60
for w in node-client:bench-client node-http:node-http node-tcp:node-tcp; do
    until_ok "node_cli add-workload --netns /var/run/netns/obench-${w%%:*}-$$ --namespace default \
        --service-account ${w%%:*} --service ${w#*:}" 60
done
wait_node_ready 3

# Every path answers 200 before anything is measured (certificates, config, endpoints).
in_ns() { local ns=obench-$1-$$; shift; ip netns exec "$ns" "$@"; }
probe() { in_ns "$1" curl -sf -o /dev/null --max-time 2 "http://$2/"; }
declare -A CLIENT=([direct]=direct-client [sidecar]=sc-client [node]=node-client)
declare -A TARGET=([direct/http]=10.82.0.12:8080 [direct/tcp]=10.82.0.12:9000
    [sidecar/http]=10.96.1.10:8080 [sidecar/tcp]=10.96.1.11:9000
    [node/http]=10.96.2.10:8080 [node/tcp]=10.96.2.11:9000)
for path in direct sidecar node; do
    for l in http tcp; do until_ok "probe ${CLIENT[$path]} ${TARGET[$path/$l]}" 120; done
done
# The Services are `mtls: strict`: a 200 on a meshed path means the hop was mutual TLS (sidecars)
# or HBONE (node proxy).
pids_of() {
    case $1 in
        sidecar) echo "${SIDECARS[*]}" ;;
        node) echo "$NODE_PID" ;;
        *) echo "" ;;
    esac
}

# The perf recording of a closed loop, if any, has ended (it runs as long as wrk).
PERF_PID=
wait_perf() { [ -z "$PERF_PID" ] || wait "$PERF_PID" 2>/dev/null || true; PERF_PID=; }
TPS=$(getconf CLK_TCK)
RESULTS=$DIR/results.tsv
: >"$RESULTS"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for run in $(seq 1 "$RUNS"); do
    for l in http tcp; do
        for path in direct sidecar node; do
            c=${CLIENT[$path]}
            t=${TARGET[$path/$l]}
            # shellcheck disable=SC2046
            set -- $(pids_of $path)
            in_ns "$c" taskset -c $LOAD_CORE wrk -t1 -c4 -d1s "http://$t/" >/dev/null # warm-up
            b=$([ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
            if [ -n "$PERF" ] && [ $# -gt 0 ]; then
                mkdir -p "$PERF"
                perf record -q -e cpu-clock -p "$(echo "$@" | tr ' ' ,)" -o "$PERF/$l-$path-$run.data" \
                    -- sleep "$DURATION" 2>/dev/null &
                PERF_PID=$!
            fi
            w=$(in_ns "$c" taskset -c $LOAD_CORE wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://$t/")
            a=$([ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
            wait_perf
            reqs=$(echo "$w" | awk '/requests in/ {print $1}')
            rps=$(echo "$w" | awk '/^Requests\/sec/ {print $2}')
            errs=$(echo "$w" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}')
            closed_us=$(awk -v a="$a" -v b="$b" -v r="$reqs" -v t="$TPS" 'BEGIN {printf "%.1f", (a - b) / t * 1e6 / r}')
            b=$([ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
            o=$(in_ns "$c" taskset -c $LOAD_CORE "$LOADTEST" --open-loop-to "$t" --rates "$RATE" \
                --duration "$DURATION" --open-connections "$OPEN_CONNECTIONS")
            a=$([ $# -gt 0 ] && cpu_ticks "$@" || echo 0)
            oreq=$(echo "$o" | jq .requests)
            open_us=$(awk -v a="$a" -v b="$b" -v r="$oreq" -v t="$TPS" 'BEGIN {printf "%.1f", (a - b) / t * 1e6 / r}')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$l" "$path" "$rps" "$closed_us" "$errs" \
                "$(echo "$o" | jq .latency.p50_us)" "$(echo "$o" | jq .latency.p99_us)" "$open_us" \
                "$(echo "$o" | jq .errors)" "$oreq" >>"$RESULTS"
            echo "run $run $l $path: $(tail -1 "$RESULTS")" >&2
        done
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

for n in "${SIDECARS[@]}" "$NODE_PID"; do rss_kb "$n"; done >"$DIR/rss"
python3 - "$RESULTS" "$RATE" "$CONNECTIONS" "$DURATION" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
rate, conns, dur = sys.argv[2:5]
by = {}
for run, l, path, rps, cus, cerr, p50, p99, ous, oerr, oreq in rows:
    by[(int(run), l, path)] = dict(rps=float(rps), cus=float(cus), cerr=int(cerr), p50=float(p50),
                                   p99=float(p99), ous=float(ous), oerr=int(oerr), oreq=int(oreq))
runs = sorted({k[0] for k in by})
print(f"closed loop: wrk -t1 -c{conns} -d{dur}s; open loop: {rate} req/s for {dur}s; "
      "added = path minus direct, same run; CPU = the proxies' (both sidecars, or the node proxy)")
print()
print("| L | path | run | closed req/s | CPU µs/req (closed) | CPU µs/req at " + rate + " req/s | p50 / p99 (µs) | added p50 / p99 (µs) | errors |")
print("|---|---|---|---|---|---|---|---|---|")
med = {}
for l in ("http", "tcp"):
    for path in ("direct", "sidecar", "node"):
        acc = []
        for r in runs:
            x, d = by[(r, l, path)], by[(r, l, "direct")]
            add50, add99 = x["p50"] - d["p50"], x["p99"] - d["p99"]
            acc.append((x["rps"], x["cus"], x["ous"], add50, add99))
            cpu = "" if path == "direct" else f'{x["cus"]:.1f}'
            ocpu = "" if path == "direct" else f'{x["ous"]:.1f}'
            added = "" if path == "direct" else f"{add50:.0f} / {add99:.0f}"
            print(f'| {l} | {path} | {r} | {x["rps"]:.0f} | {cpu} | {ocpu} | {x["p50"]:.0f} / {x["p99"]:.0f} | {added} | {x["cerr"]} / {x["oerr"]} |')
        med[(l, path)] = [statistics.median(v) for v in zip(*acc)]
print()
print("Medians over the runs:")
print()
print("| L | path | closed req/s | CPU µs/req (closed) | CPU µs/req at " + rate + " req/s | added p50 / p99 at " + rate + " req/s (µs) |")
print("|---|---|---|---|---|---|")
for l in ("http", "tcp"):
    for path in ("sidecar", "node"):
        rps, cus, ous, a50, a99 = med[(l, path)]
        print(f"| {l} | {path} | {rps:.0f} | {cus:.1f} | {ous:.1f} | {a50:.0f} / {a99:.0f} |")
EOF
echo
echo "RSS after the runs (KiB): sidecars $(head -3 "$DIR/rss" | paste -sd' '), node proxy $(tail -1 "$DIR/rss")"
