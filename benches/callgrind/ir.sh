#!/usr/bin/env bash
# User-space instructions per request of outrider-proxy, counted by callgrind: deterministic, so a
# before/after comparison holds on a loaded machine where wall-clock CPU does not.
#
#   benches/callgrind/ir.sh [PROTO] [SMALL] [LARGE]
#
# PROTO: h1 (default: HTTP/1.1 through the outbound port, `h2load --h1 -c1`: one connection,
# one request at a time, so every run takes the same path: two runs agree within 0.1 %), h2c
# (`h2load -c1 -m1`), h1-log (HTTP/1.1 with the access log on, JSON lines on
# stdout to a file). The proxy (PROXY=,
# default target/release/outrider-proxy, one worker) runs under `valgrind --tool=callgrind`
# (PROXY_ARGS= adds flags, e.g. `--access-log off`) twice, serving SMALL (1000) and LARGE (3000) requests to an nginx upstream (1 kB responses);
# the difference of the two totals over LARGE-SMALL requests is the per-request cost without
# start-up and shut-down. Needs valgrind, nginx, h2load. Writes nothing outside a temporary
# directory (KEEP=FILE keeps the LARGE run's callgrind output for callgrind_annotate); prints one line: `PROTO: N instructions per request (totals A, B)`.
set -euo pipefail

PROTO=${1:-h1}
SMALL=${2:-1000}
LARGE=${3:-3000}
PROXY=${PROXY:-target/release/outrider-proxy}
# DIR, PIDS (killed on exit), free_port.
. "$(dirname "$0")/../lib/scratch.sh" ir

UP=$(free_port)
H2UP=$(free_port)
mkdir -p "$DIR/nginx"
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
cat >"$DIR/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
error_log $DIR/nginx/error.log;
pid $DIR/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $DIR/nginx; proxy_temp_path $DIR/nginx; fastcgi_temp_path $DIR/nginx;
    uwsgi_temp_path $DIR/nginx; scgi_temp_path $DIR/nginx;
    server { listen 127.0.0.1:$UP; location / { return 200 "$BODY"; } }
    # h2c (prior knowledge) for the http2 service.
    server { listen 127.0.0.1:$H2UP http2; location / { return 200 "$BODY"; } }
}
EOF
nginx -c "$DIR/nginx/nginx.conf" -p "$DIR/nginx" &
PIDS+=($!)

cat >"$DIR/policy.yaml" <<EOF
apiVersion: outrider.io/v1
kind: Service
metadata: {name: bench}
spec:
  protocol: http
  port: 8080
  endpoints: [{address: "127.0.0.1:$UP"}]
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: bench-h2}
spec:
  protocol: http2
  port: 8081
  endpoints: [{address: "127.0.0.1:$H2UP"}]
EOF

ACCESS_LOG=(--access-log off)
LOG_FILTER=warn
case "$PROTO" in
    h1) HOST=bench:8080; LOAD=(--h1 -c1) ;;
    h1-log) HOST=bench:8080; LOAD=(--h1 -c1); ACCESS_LOG=(--access-log on); LOG_FILTER=warn,outrider::access=info ;;
    h2c) HOST=bench-h2:8081; LOAD=(-c1 -m1) ;;
    *) echo "unknown PROTO $PROTO (h1, h1-log, h2c)" >&2; exit 2 ;;
esac

run() {
    local n=$1 out=$DIR/callgrind.$1 outp adminp
    outp=$(free_port); adminp=$(free_port)
    OUTRIDER_LOG=$LOG_FILTER valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$out" \
        "$PROXY" --policy "$DIR/policy.yaml" --workers 1 "${ACCESS_LOG[@]}" \
        --outbound-port "$outp" --admin-port "$adminp" --inbound-port "$(free_port)" \
        --app-port "$UP" --inbound-bind 127.0.0.1 --metrics-port 0 --health-port 0 ${PROXY_ARGS:-} \
        >"$DIR/stdout.$n" 2>"$DIR/proxy.$n.log" &
    local pid=$!
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$adminp/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fs "http://127.0.0.1:$adminp/ready" >/dev/null || { cat "$DIR/proxy.$n.log" >&2; exit 1; }
    h2load "${LOAD[@]}" -n "$n" -H ":authority: $HOST" "http://127.0.0.1:$outp/" >"$DIR/h2load.$n" 2>&1
    grep -q "$n succeeded" "$DIR/h2load.$n" || { cat "$DIR/h2load.$n" >&2; exit 1; }
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^(summary|totals):/ {print $2; exit}' "$out"
}

A=$(run "$SMALL")
B=$(run "$LARGE")
if [ -n "${KEEP:-}" ]; then cp "$DIR/callgrind.$LARGE" "$KEEP"; fi
echo "$PROTO: $(( (B - A) / (LARGE - SMALL) )) instructions per request (totals $A, $B)"
