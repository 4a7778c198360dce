#!/usr/bin/env bash
# The demo's mesh in containers (podman, as root): a control plane, and per workload a pod --
# frontend, reviews v1, reviews v2 -- whose init container installs the iptables redirect
# (outrider-proxy iptables, NET_ADMIN), whose sidecar gets its identity with a join token and its
# config over xDS, and whose app (`outrider demo-app`, uid 1000) knows nothing of the proxy: the
# frontend calls plain http://reviews:8080/reviews. Published ports listen on 127.0.0.1 only.
#
#   docker/demo.sh up      start it (images from docker/build.sh, tag $TAG, default dev)
#   docker/demo.sh test    send traffic through the mesh and check it; prints "N passed, N failed"
#   docker/demo.sh down    remove every container, pod, secret and the network it made
#
# Environment: TAG, DEMO_SUBNET (default 10.213.7.0/24: a podman bridge network of its own),
# DEMO_PORT (default 18080: the frontend on 127.0.0.1), DEMO_API_PORT (default 18014: the
# control plane's API), DEMO_METRICS_PORT (default 18090: the sidecars' metrics, one port each).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
tag="${TAG:-dev}"
p=outrider-demo
subnet="${DEMO_SUBNET:-10.213.7.0/24}"
net="${subnet%.*}"   # 10.213.7
front_port="${DEMO_PORT:-18080}"
api_port="${DEMO_API_PORT:-18014}"
metrics_port="${DEMO_METRICS_PORT:-18090}"
cp_ip="$net.2"
front_vip="$net.100"
reviews_vip="$net.101"
cp_image="localhost/outrider-control-plane:$tag"
proxy_image="localhost/outrider-proxy:$tag"
init_image="localhost/outrider-proxy-init:$tag"
app_uid=1000

log() { echo "demo: $*" >&2; }
die() { echo "demo: $*" >&2; exit 1; }

# The demo's policy: two services with virtual IPs (what the apps dial; iptables sends it to the
# sidecar), and the TrafficPolicy of `outrider demo`: retries with a budget, a circuit breaker per
# endpoint with v1 as its fallback, and a 90/10 canary over the endpoints' version labels.
# Endpoints come from the sidecars.
policy() {
  cat <<EOF
apiVersion: outrider.io/v1
kind: Service
metadata: {name: frontend}
spec: {protocol: http, port: 8080, addresses: ["$front_vip"]}
---
apiVersion: outrider.io/v1
kind: Service
metadata: {name: reviews}
spec: {protocol: http, port: 8080, addresses: ["$reviews_vip"]}
---
apiVersion: outrider.io/v1
kind: TrafficPolicy
metadata: {name: reviews}
spec:
  service: reviews
  timeout: 2s
  retries:
    attempts: 2
    perTryTimeout: 500ms
    retryOn: [connect-failure, reset, gateway-error]
    backoff: {base: 10ms, max: 50ms}
    budget: {ratio: 0.3, minPerSecond: 10, window: 5s}
  circuitBreaker:
    failureRateThreshold: 50
    window: 6
    minimumCalls: 4
    openDuration: 2s
    halfOpenCalls: 2
    fallback: {subset: {version: v1}}
  routes:
    - name: main
      match: {pathPrefix: /}
      split: [{subset: {version: v1}, weight: 90}, {subset: {version: v2}, weight: 10}]
EOF
}

# The CLI in a throw-away container on the demo network, as the API's admin.
cli() {
  podman run --rm --network "$p" --secret "$p-api-token,type=env,target=OUTRIDER_TOKEN" \
    -e "OUTRIDER_SERVER=http://$cp_ip:15014" "$@"
}

# Poll `cmd` for up to $1 seconds.
wait_for() {
  local secs="$1" what="$2"; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { log "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 0.5
  done
}

api() { curl -fsS --max-time 5 "http://127.0.0.1:$api_port$1"; }

# One workload: a pod with its init step, sidecar and app.
# workload NAME SERVICE VERSION IP APP_PORT METRICS_HOST_PORT [extra pod args...] -- APP ARGS...
workload() {
  local name="$1" service="$2" version="$3" ip="$4" app_port="$5" mport="$6"; shift 6
  local pod_args=()
  while [ "$1" != -- ]; do pod_args+=("$1"); shift; done
  shift
  podman pod create --name "$p-$name" --network "$p" --ip "$ip" \
    --add-host "reviews:$reviews_vip" --add-host "frontend:$front_vip" \
    -p "127.0.0.1:$mport:15090" "${pod_args[@]}" >/dev/null
  # The redirect: outbound TCP of every uid but the proxy's (1337) to 15001, inbound to 15006.
  podman create --pod "$p-$name" --name "$p-$name-init" --init-ctr always \
    --cap-drop all --cap-add NET_ADMIN,NET_RAW "$init_image" >/dev/null
  podman create --pod "$p-$name" --name "$p-$name-proxy" \
    --secret "$p-join-$service,uid=1337,gid=1337,mode=0400" \
    --cap-drop all "$proxy_image" \
    --xds-address "http://$cp_ip:15010" --node-id "$name" --service "$service" \
    --namespace default --service-account "$service" \
    --identity-token "/run/secrets/$p-join-$service" \
    --label "version=$version" --app-port "$app_port" --advertise "$ip:$app_port" \
    --log-format text --access-log off >/dev/null
  podman create --pod "$p-$name" --name "$p-$name-app" --user "$app_uid:$app_uid" \
    --cap-drop all --read-only "$cp_image" demo-app "$@" >/dev/null
  podman pod start "$p-$name" >/dev/null
}

up() {
  for image in "$cp_image" "$proxy_image" "$init_image"; do
    podman image exists "$image" || die "no image $image: run docker/build.sh first"
  done
  podman network exists "$p" && die "already up (docker/demo.sh down first)"
  log "network $p ($subnet)"
  podman network create --subnet "$subnet" "$p" >/dev/null

  # The API token (admin) and one join token per service account live in podman secrets.
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' | podman secret create "$p-api-token" - >/dev/null
  log "control plane at $cp_ip (API on 127.0.0.1:$api_port)"
  podman run -d --name "$p-cp" --network "$p" --ip "$cp_ip" -p "127.0.0.1:$api_port:15014" \
    --secret "$p-api-token,uid=1337,gid=1337,mode=0400" --cap-drop all \
    "$cp_image" control-plane --bind 0.0.0.0 --data-dir /var/lib/outrider \
    --api-token-file "/run/secrets/$p-api-token" --registration-grace 2s --log-format text >/dev/null
  wait_for 30 "the control plane's API" api /v1/status || { podman logs "$p-cp" >&2; return 1; }

  policy | cli -i "$cp_image" apply -f /dev/stdin >&2
  for sa in frontend reviews; do
    cli "$cp_image" token create --namespace default --service-account "$sa" --ttl 24h -q \
      | podman secret create "$p-join-$sa" - >/dev/null
  done

  log "pods: frontend ($net.10, 127.0.0.1:$front_port), reviews-v1 ($net.11), reviews-v2 ($net.12)"
  workload reviews-v1 reviews v1 "$net.11" 9080 "$((metrics_port + 1))" -- \
    reviews --listen 0.0.0.0:9080 --version v1
  workload reviews-v2 reviews v2 "$net.12" 9080 "$((metrics_port + 2))" -- \
    reviews --listen 0.0.0.0:9080 --version v2 --fail-percent "${DEMO_V2_FAIL_PERCENT:-0}"
  workload frontend frontend v1 "$net.10" 8080 "$metrics_port" -p "127.0.0.1:$front_port:8080" -- \
    frontend --listen 0.0.0.0:8080 --upstream http://reviews:8080/reviews
  wait_for 60 "3 sidecars connected to the control plane" three_proxies || { status >&2; return 1; }
  log "up: curl http://127.0.0.1:$front_port/  (down: docker/demo.sh down)"
}

three_proxies() {
  api /v1/status | python3 -c 'import json,sys; ps=json.load(sys.stdin)["proxies"]; sys.exit(0 if len(ps)==3 else 1)'
}

status() {
  podman ps -a --filter "name=$p" --format '{{.Names}} {{.Status}}'
  api /v1/status || true
}

down() {
  local pod
  for pod in $(podman pod ps --filter "name=$p" --format '{{.Name}}'); do
    podman pod rm -f "$pod" >/dev/null
  done
  podman rm -f "$p-cp" >/dev/null 2>&1 || true
  local s
  for s in $(podman secret ls --format '{{.Name}}' | grep "^$p-" || true); do
    podman secret rm "$s" >/dev/null
  done
  podman network exists "$p" && podman network rm -f "$p" >/dev/null
  log "down"
}

passed=0
failed=0
check() {
  local name="$1"; shift
  if "$@"; then
    passed=$((passed + 1)); echo "ok   $name"
  else
    failed=$((failed + 1)); echo "FAIL $name"
  fi
}

# Every sidecar registered its workload with its SPIFFE identity (certificate from the CA).
t_identities() {
  api /v1/endpoints | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
got = sorted((i["service"], i.get("identity") or "-") for i in items)
print("  identities:", got, file=sys.stderr)
ok = len(items) == 3 and all(ident.endswith("/ns/default/sa/" + svc) and ident.startswith("spiffe://") for svc, ident in got)
sys.exit(0 if ok else 1)'
}
# Every sidecar connected over xDS and ACKed every config (no NACK).
t_acked() {
  api /v1/status | python3 -c '
import json, sys
ps = json.load(sys.stdin)["proxies"]
bad = [(p["nodeId"], t, s) for p in ps for t, s in p["types"].items() if s.get("nack") or s.get("sent") != s.get("acked")]
print("  not acked:", bad, file=sys.stderr) if bad else None
sys.exit(0 if ps and not bad else 1)'
}
# Both reviews endpoints registered by their sidecars, with their version labels, meshed.
t_endpoints() {
  api /v1/endpoints | python3 -c '
import json, sys
items = [i for i in json.load(sys.stdin)["items"] if i["service"] == "reviews"]
versions = sorted(i.get("labels", {}).get("version", "") for i in items)
print("  reviews endpoints:", [(i.get("address"), i.get("labels"), i.get("identity")) for i in items], file=sys.stderr)
meshed = all(i.get("identity", "").endswith("/ns/default/sa/reviews") for i in items)
sys.exit(0 if versions == ["v1", "v2"] and meshed else 1)'
}
# Requests from the host reach the frontend through its sidecar's inbound side, the frontend's
# call to http://reviews:8080 goes through both sidecars (mTLS), and the 90/10 split shows.
t_traffic() {
  local n=200 ok=0 v1=0 v2=0 i body
  for i in $(seq 1 $n); do
    if body="$(curl -fsS --max-time 5 "http://127.0.0.1:$front_port/")"; then
      ok=$((ok + 1))
      case "$body" in *"reviews v1:"*) v1=$((v1 + 1)) ;; *"reviews v2:"*) v2=$((v2 + 1)) ;; esac
    fi
  done
  echo "  $ok/$n answered 200: v1 $v1, v2 $v2" >&2
  [ "$ok" = "$n" ] && [ "$v2" -gt 0 ] && [ "$v1" -gt "$v2" ]
}
# The calls between sidecars were mutual TLS: the reviews sidecars accepted mTLS connections.
t_mtls() {
  local total=0 port n
  for port in $((metrics_port + 1)) $((metrics_port + 2)); do
    n="$(curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" \
      | awk '/^outrider_tls_connections_total\{.*direction="inbound"/ {s += $NF} END {print s + 0}')"
    total=$((total + ${n%.*}))
  done
  echo "  inbound mTLS connections at the reviews sidecars: $total" >&2
  [ "$total" -gt 0 ]
}
# The app is unaware of the proxy: without the redirect, reviews' virtual IP answers nothing --
# from the host (no sidecar there), a connection to it fails.
t_vip_needs_the_mesh() {
  ! curl -fsS --max-time 2 "http://$reviews_vip:8080/" >/dev/null 2>&1
}
# Every published port listens on 127.0.0.1 only.
t_loopback_only() {
  local ports
  ports="$(for c in $(podman ps --filter "name=$p" --format '{{.Names}}'); do podman port "$c"; done | sort -u)"
  echo "$ports" | sed 's/^/  /' >&2
  [ -n "$ports" ] && ! echo "$ports" | grep -qv '127\.0\.0\.1:'
}
# The proxy, control plane and app processes are not root; every init step ran and exited 0.
t_users() {
  local bad=0 c
  for c in "$p-cp" "$p-frontend-proxy" "$p-reviews-v1-proxy"; do
    [ "$(podman inspect -f '{{.Config.User}}' "$c")" = 1337:1337 ] || { echo "  $c user $(podman inspect -f '{{.Config.User}}' "$c")" >&2; bad=1; }
  done
  [ "$(podman inspect -f '{{.Config.User}}' "$p-frontend-app")" = "$app_uid:$app_uid" ] || bad=1
  for c in "$p-frontend-init" "$p-reviews-v1-init" "$p-reviews-v2-init"; do
    [ "$(podman inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$c")" = "exited 0" ] || { echo "  $c did not exit 0" >&2; bad=1; }
  done
  [ "$bad" = 0 ]
}

run_tests() {
  podman network exists "$p" || die "not up (docker/demo.sh up first)"
  check "every sidecar has its workload identity" t_identities
  check "every config is ACKed" t_acked
  check "both reviews versions registered with their labels" t_endpoints
  check "traffic flows through the mesh with the canary split" t_traffic
  check "sidecars talk mutual TLS" t_mtls
  check "the virtual IP answers only through a sidecar" t_vip_needs_the_mesh
  check "ports are published on 127.0.0.1 only" t_loopback_only
  check "proxies and apps do not run as root" t_users
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}

[ "$(id -u)" = 0 ] || die "run as root (rootful podman: pods with static IPs and NET_ADMIN init steps)"
case "${1:-}" in
  up) up ;;
  down) down ;;
  test) run_tests ;;
  status) status ;;
  *) echo "usage: $0 up|test|down|status" >&2; exit 2 ;;
esac
