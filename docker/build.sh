#!/usr/bin/env bash
# Builds every image of docker/Dockerfile:
#   localhost/outrider-proxy:TAG  localhost/outrider-control-plane:TAG  localhost/outrider-proxy-init:TAG
# With podman (default) it builds on the local base images of docker/base-images.sh (made on the
# first run from Debian's packages and the host's Rust toolchain) and never pulls from a registry.
# With CONTAINER_ENGINE=docker it uses the Dockerfile's defaults (rust:1.95-bookworm,
# debian:bookworm-slim) unless BUILDER / INIT_BASE say otherwise.
# Environment: TAG (default dev), CONTAINER_ENGINE (podman|docker), BUILDER, INIT_BASE,
# PROFILE (cargo profile, default release), TARGET (Rust target, default x86_64-unknown-linux-gnu).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
engine="${CONTAINER_ENGINE:-podman}"
tag="${TAG:-dev}"

args=(-f "$here/Dockerfile")
[ -n "${PROFILE:-}" ] && args+=(--build-arg "PROFILE=$PROFILE")
[ -n "${TARGET:-}" ] && args+=(--build-arg "TARGET=$TARGET")
if [ "$engine" = podman ]; then
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
  BUILDER="${BUILDER:-$("$here/base-images.sh")}"
  INIT_BASE="${INIT_BASE:-localhost/outrider-debian:bookworm}"
  args+=(--pull=never)
fi
[ -n "${BUILDER:-}" ] && args+=(--build-arg "BUILDER=$BUILDER")
[ -n "${INIT_BASE:-}" ] && args+=(--build-arg "INIT_BASE=$INIT_BASE")

for image in proxy control-plane proxy-init; do
  start=$(date +%s)
  echo "== $engine build --target $image -> localhost/outrider-$image:$tag" >&2
  "$engine" build "${args[@]}" --target "$image" -t "localhost/outrider-$image:$tag" "$root"
  echo "== built localhost/outrider-$image:$tag in $(( $(date +%s) - start ))s" >&2
done
"$engine" images --filter "reference=localhost/outrider-*:$tag" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
