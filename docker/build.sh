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

# One snapshot of the build context for the three images (the files git tracks or would track:
# uncommitted edits included, target/ and other ignored files left out), so the build stage (the
# cargo build) runs once for all of them and every image carries binaries of the same sources,
# even when the tree is edited while the build runs. Outside a git checkout: the tree itself.
context="$root"
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  context="$(mktemp -d /var/tmp/outrider-context.XXXXXX)"
  trap 'rm -rf "$context"' EXIT
  (cd "$root" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf -) | tar -C "$context" -xf -
fi

for image in proxy control-plane proxy-init; do
  start=$(date +%s)
  echo "== $engine build --target $image -> localhost/outrider-$image:$tag" >&2
  "$engine" build "${args[@]}" --target "$image" -t "localhost/outrider-$image:$tag" "$context"
  echo "== built localhost/outrider-$image:$tag in $(( $(date +%s) - start ))s" >&2
done
"$engine" images --filter "reference=localhost/outrider-*:$tag" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
