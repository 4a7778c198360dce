#!/usr/bin/env bash
# Makes the two local base images docker/Dockerfile builds on -- from Debian's packages and the
# host's Rust toolchain; nothing is pulled from an image registry:
#   localhost/outrider-debian:bookworm        debootstrap --variant=minbase bookworm, imported
#   localhost/outrider-builder:rust-<version> that + gcc, libc6-dev, ca-certificates (and the
#                                             host's extra CAs of /usr/local/share/ca-certificates)
#                                             and the host's Rust toolchain (`rustc --print
#                                             sysroot`, without its docs) in /usr/local/rust
# An image that exists already is kept (--force makes both again). Prints the builder's name.
# Environment: DEBIAN_MIRROR (default: the first Debian mirror of /etc/apt/sources.list*).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

force=0
[ "${1:-}" = "--force" ] && force=1
debian_image=localhost/outrider-debian:bookworm
sysroot="$(readlink -f "$(rustc --print sysroot)")"
rust_version="$(rustc --version | awk '{print $2}')"
builder_image="localhost/outrider-builder:rust-$rust_version"

exists() { podman image exists "$1"; }
log() { echo "base-images: $*" >&2; }

mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local m
  m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^[[:space:]]*#' \
    | grep -oE '(https?)://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d ' ')"
  echo "${m:-http://deb.debian.org/debian}"
}

if [ "$force" = 1 ] || ! exists "$debian_image"; then
  command -v debootstrap >/dev/null || { echo "base-images: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  rootfs="$(mktemp -d /var/tmp/outrider-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  m="$(mirror)"
  log "debootstrap --variant=minbase bookworm from $m"
  debootstrap --variant=minbase bookworm "$rootfs" "$m" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
  rm -f "$rootfs.log"
  # A smaller image: no apt lists, caches or docs.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" --numeric-owner -c . | podman import \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD=["/bin/bash"]' - "$debian_image" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "made $debian_image"
fi

if [ "$force" = 1 ] || ! exists "$builder_image"; then
  log "making $builder_image (toolchain from $sysroot)"
  ctr="$(buildah from --pull-never "$debian_image")"
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah run "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*'
  mnt="$(buildah mount "$ctr")"
  mkdir -p "$mnt/usr/local/rust" "$mnt/usr/local/cargo"
  tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$mnt/usr/local/rust" -x
  # The host's own extra CAs (e.g. a TLS-inspecting egress proxy's): cargo must trust what the
  # host trusts to reach crates.io from inside the build.
  extra_cas=(/usr/local/share/ca-certificates/*.crt)
  if [ -e "${extra_cas[0]}" ]; then
    cp "${extra_cas[@]}" "$mnt/usr/local/share/ca-certificates/"
  fi
  buildah umount "$ctr" >/dev/null
  buildah run "$ctr" -- update-ca-certificates >/dev/null
  buildah config \
    --env PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/usr/local/cargo \
    --label "org.opencontainers.image.description=Outrider builder: Debian bookworm + Rust $rust_version" \
    "$ctr"
  buildah commit --rm "$ctr" "$builder_image" >/dev/null
  trap - EXIT
  log "made $builder_image"
fi
echo "$builder_image"
