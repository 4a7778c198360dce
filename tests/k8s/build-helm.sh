#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v4, HELM_VERSION of versions.env) from the Go module proxy and caches
# it outside the repository, in ${OUTRIDER_TOOLS:-/var/cache/outrider-tools}/helm-<HELM_VERSION>/helm.
# A complete cache is reused (nothing is downloaded). Prints the binary's path.
# Go's module and build caches live beside the result and are removed after a successful build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

tools="${OUTRIDER_TOOLS:-/var/cache/outrider-tools}"
dest="$tools/helm-$HELM_VERSION"
complete() { [ -x "$dest/helm" ] && [ -f "$dest/.complete" ]; }
if complete; then
  echo "$dest/helm"
  exit 0
fi
command -v go >/dev/null || { echo "build-helm: go is not installed" >&2; exit 1; }
mkdir -p "$tools"
exec 9>"$tools/.helm-$HELM_VERSION.lock"
flock 9
if complete; then
  echo "$dest/helm"
  exit 0
fi
work="$dest.work"
mkdir -p "$work" "$dest"
export GOPATH="$work/gopath" GOMODCACHE="$work/gopath/pkg/mod" GOCACHE="$work/gocache"
export GOFLAGS="-buildvcs=false -modcacherw" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
echo "build-helm: helm $HELM_VERSION" >&2
GOBIN="$dest" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
"$dest/helm" version >&2
touch "$dest/.complete"
rm -rf "$work"
echo "$dest/helm"
