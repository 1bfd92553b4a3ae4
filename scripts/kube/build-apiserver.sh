#!/usr/bin/env bash
# Build weft-kube-apiserver (scripts/kube/apiserver/) from Debian's packaged Kubernetes libraries
# and Go toolchain, and unpack Debian's kubectl beside it. Prints the binary's path on stdout.
#
# The packages come from Debian unstable at the versions pinned in debian-packages.txt, through a
# private apt configuration (the machine's own sources and dpkg database are not touched) and are
# unpacked with dpkg-deb under $WEFT_KUBE_CACHE (default /var/cache/weft/kube). Go builds in
# GOPATH mode against /usr/share/gocode of that tree with GOPROXY=off: nothing is fetched but
# Debian's .debs. The binary is cached under a hash of the pins, the Go sources and this script,
# so a second run is instant.
#
#   scripts/kube/build-apiserver.sh            build if needed, print the apiserver binary path
#   scripts/kube/build-apiserver.sh --kubectl  the same, but print kubectl's path
# Exit status: 0 built (or cached), 3 Debian's archive unreachable, 1 any other failure (a
# pinned version gone from unstable included: the pins need updating, tests must not skip).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${WEFT_KUBE_CACHE:-/var/cache/weft/kube}"
MIRROR="${WEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PINS="$HERE/debian-packages.txt"
WANT="apiserver"
[[ "${1:-}" == "--kubectl" ]] && WANT="kubectl"

say() { printf '[build-apiserver] %s\n' "$*" >&2; }
die() { printf '[build-apiserver] error: %s\n' "$*" >&2; exit 1; }
# Exit status 3: Debian's archive cannot be reached (tests skip, naming why); 1: anything else.
unreachable() { printf '[build-apiserver] error: %s\n' "$*" >&2; exit 3; }

pins_hash="$(sha256sum "$PINS" | cut -c1-16)"
src_hash="$(cat "$PINS" "$HERE/build-apiserver.sh" "$HERE"/apiserver/*.go | sha256sum | cut -c1-16)"
ROOTDIR="$CACHE/debs-$pins_hash/root"
BIN="$CACHE/bin/weft-kube-apiserver-$src_hash"
KUBECTL="$ROOTDIR/usr/bin/kubectl"

if [[ -x "$BIN" && -x "$KUBECTL" ]]; then
  [[ "$WANT" == kubectl ]] && echo "$KUBECTL" || echo "$BIN"
  exit 0
fi

mkdir -p "$CACHE/bin"
exec 9>"$CACHE/.lock"
flock 9 # one build at a time; a concurrent caller waits, then finds the cache
if [[ -x "$BIN" && -x "$KUBECTL" ]]; then
  [[ "$WANT" == kubectl ]] && echo "$KUBECTL" || echo "$BIN"
  exit 0
fi

started=$SECONDS
if [[ ! -f "$ROOTDIR/.complete" ]]; then
  APT="$CACHE/apt"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs-$pins_hash"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR unstable main" >"$APT/sources.list"
  : >"$APT/status"
  apt_opts=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o "Dir::State::status=$APT/status"
    -o Debug::NoLocking=1 -o APT::Architecture=amd64 -o Acquire::Languages=none -o APT::Sandbox::User=root)
  say "fetching Debian unstable's package index from $MIRROR (private apt state in $APT)"
  apt-get "${apt_opts[@]}" -qq --error-on=any update || unreachable "cannot reach Debian's archive at $MIRROR (set WEFT_DEBIAN_MIRROR to a mirror)"
  mapfile -t pkgs < <(grep -v '^#' "$PINS" | grep .)
  say "downloading ${#pkgs[@]} pinned packages"
  (cd "$APT/debs-$pins_hash" && apt-get "${apt_opts[@]}" -qq download "${pkgs[@]}") \
    || die "apt-get download failed: a pinned version may have left unstable; update $PINS (see docs/kubernetes-test-apiserver.md)"
  rm -rf "$ROOTDIR"
  mkdir -p "$ROOTDIR"
  say "unpacking into $ROOTDIR"
  for deb in "$APT/debs-$pins_hash"/*.deb; do dpkg-deb -x "$deb" "$ROOTDIR"; done
  touch "$ROOTDIR/.complete"
fi

GO="$ROOTDIR/usr/lib/go-1.27/bin/go"
"$GO" version >/dev/null || die "$GO does not run on this machine"
"$KUBECTL" version --client >/dev/null 2>&1 || die "$KUBECTL does not run on this machine (glibc?)"

# GOPATH mode: the program's own package tree first, then Debian's gocode.
BUILD="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT
PKG="$BUILD/src/weft-kube-apiserver"
mkdir -p "$PKG/openapi"
cp "$HERE"/apiserver/*.go "$PKG/"
export GOROOT="$ROOTDIR/usr/lib/go-1.27" GOPATH="$BUILD:$ROOTDIR/usr/share/gocode" GO111MODULE=off \
  GOPROXY=off GOFLAGS='' GOTOOLCHAIN=local GOCACHE="$CACHE/gocache" CGO_ENABLED=0 GOTELEMETRY=off
export PATH="$GOROOT/bin:$PATH"
say "building openapi-gen (kube-openapi) and generating the OpenAPI definitions of k8s.io/api"
go build -o "$BUILD/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen
: >"$BUILD/header.txt"
(cd "$BUILD" && ./openapi-gen --go-header-file header.txt --output-dir "$PKG/openapi" --output-pkg weft-kube-apiserver/openapi \
  --output-file zz_generated.openapi.go --report-filename /dev/null \
  k8s.io/api/core/v1 k8s.io/api/apps/v1 k8s.io/api/discovery/v1 k8s.io/api/rbac/v1 k8s.io/api/authentication/v1 \
  k8s.io/api/authorization/v1 \
  k8s.io/api/coordination/v1 k8s.io/api/policy/v1 k8s.io/api/autoscaling/v1 \
  k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/util/intstr \
  k8s.io/apimachinery/pkg/api/resource k8s.io/apimachinery/pkg/version)
say "building weft-kube-apiserver"
# Report the Kubernetes version the libraries are (golang-k8s-apiserver-dev 0.36.x is 1.36.x).
minor_patch="$(sed -n 's/^golang-k8s-apiserver-dev=0\.\([0-9]*\.[0-9]*\).*/\1/p' "$PINS")"
ver="k8s.io/component-base/version"
ldflags="-X $ver.gitVersion=v1.$minor_patch -X $ver.gitMajor=1 -X $ver.gitMinor=${minor_patch%%.*}"
ldflags+=" -X $ver.gitTreeState=clean -X $ver.buildDate=1970-01-01T00:00:00Z"
(cd "$PKG" && go build -trimpath -ldflags "$ldflags" -o "$BIN.tmp" .)
mv "$BIN.tmp" "$BIN"
# Earlier sources' builds, once a day old (a running test session may still start one).
find "$CACHE/bin" -name 'weft-kube-apiserver-*' ! -path "$BIN" -mmin +1440 -delete
say "built $BIN in $((SECONDS - started))s"
[[ "$WANT" == kubectl ]] && echo "$KUBECTL" || echo "$BIN"
