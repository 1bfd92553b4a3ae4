#!/usr/bin/env bash
# Set up a Debian (bookworm) machine for weft: system packages, kernel headers for bcc, and a
# virtualenv at .venv that can import bcc. Idempotent: safe to run again.
#   scripts/setup.sh          runtime needs
#   scripts/setup.sh --test   runtime and test needs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS=""
[[ "${1:-}" == "--test" ]] && EXTRAS="[test]"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (weft loads eBPF and creates network namespaces); try: sudo $0 $*"
grep -qw cgroup2 /proc/self/mounts || die "no cgroup v2 hierarchy is mounted; weft needs cgroup v2"
[[ -e /sys/fs/bpf ]] || die "no /sys/fs/bpf: this kernel has no BPF filesystem"
[[ -f /etc/debian_version ]] || die "this script knows Debian's packages; on another distribution install the equivalents of the APT list in $0 by hand"

APT_PACKAGES=(
  python3 python3-venv python3-dev python3-bpfcc bpfcc-tools libbpfcc
  bpftool clang llvm iproute2 nftables procps psmisc curl
  iperf3 stunnel4 haproxy linux-headers-amd64
  redis-server  # Global RateLimitPolicy counters (the lab's, and the tests')
  prometheus    # `weftctl lab up --prometheus` (lab/prometheus.py); promtool checks our configs
)
[[ -n "$EXTRAS" ]] && APT_PACKAGES+=(etcd-server)  # the test Kubernetes API server's store (tests/kubeapi.py)
# tests/integration/test_vagrant.py: `vagrant validate` of the Vagrantfile, shellcheck of its scripts
[[ -n "$EXTRAS" ]] && APT_PACKAGES+=(vagrant shellcheck)
# tests/chromium.py: `weftctl dashboard`'s page loaded in headless Chromium
[[ -n "$EXTRAS" ]] && APT_PACKAGES+=(chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    # The package enables (and on systemd starts) its own server on :9090 with a data folder
    # that grows; the lab runs its own instance with its own config, data and address.
    say "disabling the prometheus package's own service (the lab runs its own server)"
    systemctl disable prometheus.service >/dev/null 2>&1 || update-rc.d prometheus disable >/dev/null 2>&1 || true
    if [[ -d /run/systemd/system ]]; then
      systemctl stop prometheus.service >/dev/null 2>&1 || true
    else
      invoke-rc.d prometheus stop >/dev/null 2>&1 || true
    fi
  fi
else
  say "Debian packages present"
fi

# bcc compiles against the running kernel's headers. A kernel without a headers package of
# its own (a cloud or VM kernel) gets Debian's newest headers linked in; BTF does the rest.
KVER="$(uname -r)"
if [[ ! -e "/lib/modules/$KVER/build" || ! -e "/lib/modules/$KVER/source" ]]; then
  HEADERS="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)"
  [[ -n "$HEADERS" ]] || die "no kernel headers under /usr/src for bcc (install linux-headers-amd64)"
  COMMON="${HEADERS%-amd64}-common"
  [[ -d "$COMMON" ]] || die "no $COMMON next to $HEADERS (Debian splits kernel headers in two)"
  say "linking /lib/modules/$KVER/{build,source} -> $HEADERS, $COMMON (no headers package for this kernel)"
  mkdir -p "/lib/modules/$KVER"
  ln -sfn "$HEADERS" "/lib/modules/$KVER/build"
  ln -sfn "$COMMON" "/lib/modules/$KVER/source"
fi
if ! mountpoint -q /sys/fs/bpf; then
  say "mounting the BPF filesystem at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf || die "cannot mount the BPF filesystem at /sys/fs/bpf"
fi
[[ -e /sys/kernel/btf/vmlinux ]] || say "warning: no /sys/kernel/btf/vmlinux; eBPF programs needing BTF will not load"

# The venv uses Debian's Python 3.11, the one python3-bpfcc is built for, and sees its
# site-packages so `import bcc` works; everything else comes from PyPI into the venv.
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
  say "creating $VENV from /usr/bin/python3 with system site packages"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
say "installing weft into $VENV (pip install -e .$EXTRAS)"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
"$VENV/bin/pip" install -q -e "$ROOT$EXTRAS" || die "pip install failed"
"$VENV/bin/python" -c 'import bcc, pyroute2' || die "the venv cannot import bcc and pyroute2"
if [[ -n "$EXTRAS" ]]; then
  # Built once from Debian unstable's packaged k8s.io libraries, then cached (a few minutes cold).
  say "building the test Kubernetes API server (scripts/kube/build-apiserver.sh)"
  rc=0; "$ROOT/scripts/kube/build-apiserver.sh" >/dev/null || rc=$?
  ((rc == 3)) && say "warning: Debian's archive is unreachable; tests marked kubernetes will be skipped"
  ((rc == 0 || rc == 3)) || die "scripts/kube/build-apiserver.sh failed"
fi
say "ready: $VENV/bin/weftctl"
