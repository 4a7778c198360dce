#!/usr/bin/env bash
# HTTP/1.1 CPU per request of one proxy, split into user and system time, and (STRACE=1) its
# system calls per request: an A/B tool for the request path, quicker than the harness and
# without its other targets.
#
#   benches/split/h1.sh PROXY          # PROXY: an outrider-proxy binary, or `haproxy`
#   STRACE=1 benches/split/h1.sh PROXY # also count system calls per request (strace slows the
#                                      # proxy down, so its CPU figures are not comparable then)
#
# The proxy runs pinned to core 0 with one worker (HAProxy: one thread), nginx (the upstream,
# 1 kB responses) and wrk (-t1, C=50 connections, D=5 seconds after a 1 s warm-up) pinned to
# core 1. CPU is the proxy's utime and stime from /proc over the measured run, divided by the
# requests wrk completed. Run the binaries to compare alternately, a few times each: single runs
# of the same binary move by about 5 %. Needs nginx, wrk, taskset (strace for STRACE=1).
set -euo pipefail

PROXY=${1:?usage: benches/split/h1.sh PROXY|haproxy}
CONNS=${C:-50}
SECS=${D:-5}
# DIR, PIDS (killed on exit), free_port.
. "$(dirname "$0")/../lib/scratch.sh" split
UP=$(free_port)
OUT=$(free_port)
ADMIN=$(free_port)
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')

mkdir -p "$DIR/nginx"
cat >"$DIR/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
error_log $DIR/nginx/error.log;
pid $DIR/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $DIR/nginx; proxy_temp_path $DIR/nginx; fastcgi_temp_path $DIR/nginx;
    uwsgi_temp_path $DIR/nginx; scgi_temp_path $DIR/nginx;
    server { listen 127.0.0.1:$UP; location / { return 200 "$BODY"; } }
}
EOF
taskset -c 1 nginx -c "$DIR/nginx/nginx.conf" -p "$DIR/nginx" &
PIDS+=($!)

if [ "$PROXY" = haproxy ]; then
    cat >"$DIR/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 5000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
frontend h1
  bind 127.0.0.1:$OUT
  default_backend b1
backend b1
  http-reuse always
  server s1 127.0.0.1:$UP
EOF
    taskset -c 0 haproxy -db -f "$DIR/haproxy.cfg" >"$DIR/proxy.log" 2>&1 &
    P=$!
    PIDS+=($P)
    for _ in $(seq 100); do
        curl -fs -o /dev/null "http://127.0.0.1:$OUT/" && break
        sleep 0.1
    done
else
    cat >"$DIR/policy.yaml" <<EOF
apiVersion: outrider.io/v1
kind: Service
metadata: {name: bench}
spec:
  protocol: http
  port: 8080
  endpoints: [{address: "127.0.0.1:$UP"}]
EOF
    OUTRIDER_LOG=warn taskset -c 0 "$PROXY" --policy "$DIR/policy.yaml" --workers 1 --access-log off \
        --outbound-port "$OUT" --admin-port "$ADMIN" --inbound-port "$(free_port)" --app-port "$UP" \
        --inbound-bind 127.0.0.1 --metrics-port 0 --health-port 0 >"$DIR/proxy.log" 2>&1 &
    P=$!
    PIDS+=($P)
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fs "http://127.0.0.1:$ADMIN/ready" >/dev/null || { cat "$DIR/proxy.log" >&2; exit 1; }
fi

load() { taskset -c 1 wrk -t1 -c"$CONNS" -d"$1" -H "Host: bench:8080" "http://127.0.0.1:$OUT/"; }
load 1s >/dev/null
read -r U0 S0 < <(awk '{print $14, $15}' "/proc/$P/stat")
if [ -n "${STRACE:-}" ]; then
    strace -c -f -p "$P" -o "$DIR/strace" 2>/dev/null &
    ST=$!
    sleep 0.5
fi
if [ -n "${WAKEUPS:-}" ]; then
    perf record -q -a -e sched:sched_wakeup -o "$DIR/wakeups.data" 2>/dev/null &
    WK=$!
    sleep 0.5
fi
if [ -n "${PERF:-}" ]; then
    perf record -q -e cpu-clock -F 4999 -g -p "$P" -o "$DIR/perf.data" 2>/dev/null &
    PF=$!
    sleep 0.5
fi
load "${SECS}s" >"$DIR/wrk"
read -r U1 S1 < <(awk '{print $14, $15}' "/proc/$P/stat")
REQ=$(awk '/requests in/ {print $1}' "$DIR/wrk")
if [ -n "${STRACE:-}" ]; then
    kill -INT "$ST"
    wait "$ST" || true
    echo "system calls per request:"
    awk -v r="$REQ" '$4 ~ /^[0-9]+$/ && NF >= 5 && $NF != "total" {printf "  %s %.2f\n", $NF, $4 / r}' "$DIR/strace" | sort -k2 -rn | head -8
    awk -v r="$REQ" '$NF == "total" {printf "  total %.2f\n", $4 / r}' "$DIR/strace"
fi
if [ -n "${PERF:-}" ]; then
    kill -INT "$PF"
    wait "$PF" || true
    perf report -i "$DIR/perf.data" --no-children --sort "$PERF" --stdio -g none --percent-limit 0.7 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -60
    [ -n "${PERF_KEEP:-}" ] && cp "$DIR/perf.data" "$PERF_KEEP"
fi
if [ -n "${WAKEUPS:-}" ]; then
    kill -INT "$WK"
    wait "$WK" || true
    echo "wake-ups per request, by waker and woken:"
    perf script -i "$DIR/wakeups.data" -F comm,trace 2>/dev/null |
        awk -v r="$REQ" '{w = $1; sub(/:.*/, "", w); c = $2; sub(/^comm=/, "", c); n[w " -> " c]++}
            END {for (k in n) if (n[k] / r >= 0.005) printf "  %s %.3f\n", k, n[k] / r}' | sort -k4 -rn
fi
TCK=$(getconf CLK_TCK)
python3 -c "
r, t = $REQ, $TCK
u, s = ($U1 - $U0) * 1e6 / t / r, ($S1 - $S0) * 1e6 / t / r
print(f'$PROXY: {r} requests, user {u:.2f} + system {s:.2f} = {u + s:.2f} µs CPU per request')"
