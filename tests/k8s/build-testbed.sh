#!/usr/bin/env bash
# Builds the Kubernetes test bed's binaries -- etcd and kube-apiserver -- from the Go module proxy
# and caches them outside the repository, in
#   ${OUTRIDER_TOOLS:-/var/cache/outrider-tools}/k8s-<K8S_VERSION>-etcd-<ETCD_VERSION>/
# A cache that is already complete is reused (nothing is downloaded). Prints the directory.
#
# kube-apiserver is built as a dependency of a throw-away module that requires
# k8s.io/kubernetes and pins every k8s.io staging module (k8s.io/api, k8s.io/apiserver, ...) to
# the matching v0.x release with `replace` lines -- the ones k8s.io/kubernetes's own go.mod points
# at ./staging/src. etcd is built the same way from go.etcd.io/etcd/server/v3.
#
# Go's module and build caches live in a work directory beside the result and are removed after
# a successful build (OUTRIDER_TOOLS_KEEP_GO_CACHE=1 keeps them, for repeated builds).
# Needs Go >= the `go` line of the modules (1.26.0); when the local Go is older, set
# GOTOOLCHAIN=go1.27.3 and the go command fetches that toolchain from the module proxy.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

tools="${OUTRIDER_TOOLS:-/var/cache/outrider-tools}"
dest="$tools/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
complete() { [ -x "$dest/etcd" ] && [ -x "$dest/kube-apiserver" ] && [ -f "$dest/.complete" ]; }

if complete; then
  echo "$dest"
  exit 0
fi
command -v go >/dev/null || { echo "build-testbed: go is not installed" >&2; exit 1; }
mkdir -p "$tools"
# One build at a time per version; a second caller waits and then reuses the result.
exec 9>"$tools/.k8s-$K8S_VERSION-etcd-$ETCD_VERSION.lock"
flock 9
if complete; then
  echo "$dest"
  exit 0
fi

work="$dest.work"
mkdir -p "$work"
export GOPATH="$work/gopath" GOMODCACHE="$work/gopath/pkg/mod" GOCACHE="$work/gocache"
export GOFLAGS="-buildvcs=false -modcacherw" CGO_ENABLED=0 GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GONOSUMDB="" GOPRIVATE=""
start=$(date +%s)
log() { echo "build-testbed: [$(( $(date +%s) - start ))s] $*" >&2; }
out="$work/bin"
mkdir -p "$out"

# --- etcd ----------------------------------------------------------------------------------
if [ ! -x "$out/etcd" ]; then
  log "etcd $ETCD_VERSION"
  m="$work/etcd-mod"
  rm -rf "$m" && mkdir -p "$m" && cd "$m"
  go mod init outrider.test/etcd-build >/dev/null 2>&1
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 || go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$out/etcd.tmp" "$out/etcd"
fi

# --- kube-apiserver ------------------------------------------------------------------------
if [ ! -x "$out/kube-apiserver" ]; then
  log "kube-apiserver $K8S_VERSION (staging modules $K8S_STAGING_VERSION)"
  m="$work/k8s-mod"
  rm -rf "$m" && mkdir -p "$m" && cd "$m"
  go mod init outrider.test/kube-apiserver-build >/dev/null 2>&1
  # The staging modules k8s.io/kubernetes replaces with ./staging/src/k8s.io/X: pin each to the
  # released X@K8S_STAGING_VERSION (the go.mod of k8s.io/kubernetes requires them as v0.0.0).
  k8smod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$k8smod" ] || { echo "build-testbed: no go.mod for k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
  {
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/k8s.io/[a-z0-9-]*$#\t\1 => \1 '"$K8S_STAGING_VERSION"'#p' "$k8smod"
    echo ")"
  } >> go.mod
  grep -q 'k8s.io/apiserver =>' go.mod || { echo "build-testbed: found no staging replace lines in $k8smod" >&2; exit 1; }
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  go mod tidy >/dev/null 2>&1 || go mod tidy
  v="k8s.io/component-base/version"
  ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=$(echo "$K8S_VERSION" | sed 's/^v\([0-9]*\)\..*/\1/')"
  ldflags="$ldflags -X $v.gitMinor=$(echo "$K8S_VERSION" | sed 's/^v[0-9]*\.\([0-9]*\)\..*/\1/') -X $v.gitTreeState=clean"
  ldflags="$ldflags -X $v.buildDate=1970-01-01T00:00:00Z"
  go build -trimpath -tags notest -ldflags "$ldflags" -o "$out/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$out/kube-apiserver.tmp" "$out/kube-apiserver"
fi

log "built; go caches: $(du -sh "$work" 2>/dev/null | cut -f1)"
rm -rf "$dest"
mkdir -p "$dest"
mv "$out/etcd" "$out/kube-apiserver" "$dest/"
"$dest/etcd" --version | sed -n 1p >&2  # sed reads it all: `head` could end the pipe early (SIGPIPE, exit 141)
"$dest/kube-apiserver" --version >&2
touch "$dest/.complete"
if [ "${OUTRIDER_TOOLS_KEEP_GO_CACHE:-0}" != 1 ]; then
  rm -rf "$work"
fi
log "done: $dest ($(du -sh "$dest" | cut -f1))"
echo "$dest"
