#!/usr/bin/env bash
# Every lab VM: what k3s and weft's node agent need from the host (Debian 12 box).
# - cgroup v2 only (Debian 12's default): weft attaches to pods' v2 cgroups;
# - the BPF filesystem at /sys/fs/bpf, mounted now and at boot: the agent pins its maps there,
#   and the node DaemonSet mounts the host's folder;
# - curl for the k3s installer and the image hand-over.
set -euo pipefail

say() { printf '[node-prep] %s\n' "$*"; }
die() { printf '[node-prep] error: %s\n' "$*" >&2; exit 1; }

[[ "$(stat -fc %T /sys/fs/cgroup)" == "cgroup2fs" ]] \
  || die "/sys/fs/cgroup is not cgroup v2 (boot with systemd.unified_cgroup_hierarchy=1)"

if ! mountpoint -q /sys/fs/bpf; then
  say "mounting the BPF filesystem at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
grep -qs '^bpf /sys/fs/bpf ' /etc/fstab || echo 'bpf /sys/fs/bpf bpf defaults 0 0' >> /etc/fstab

export DEBIAN_FRONTEND=noninteractive
if ! command -v curl >/dev/null; then
  say "installing curl"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
fi
# Kubernetes wants no swap; Debian's cloud boxes have none, a local one may.
swapoff -a
sed -i '/\sswap\s/s/^/#/' /etc/fstab
say "ready: $(uname -r), cgroup v2, bpffs mounted"
