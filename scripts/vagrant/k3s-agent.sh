#!/usr/bin/env bash
# A k3s agent joining the server, pinned to the server's $K3S_VERSION, then weft's image
# imported into its containerd (fetched from the server, which built it: weft-image.sh).
# With libvirt the VMs come up in parallel, so both steps wait for the server, bounded.
#   env: K3S_VERSION, K3S_TOKEN, NODE_IP, SERVER_IP
set -euo pipefail
: "${K3S_VERSION:?}" "${K3S_TOKEN:?}" "${NODE_IP:?}" "${SERVER_IP:?}"
# shellcheck source=scripts/vagrant/lib-k3s.sh
source /vagrant/scripts/vagrant/lib-k3s.sh

say() { printf '[k3s-agent] %s\n' "$*"; }
die() { printf '[k3s-agent] error: %s\n' "$*" >&2; exit 1; }

say "waiting for the server's API at https://$SERVER_IP:6443"
for attempt in $(seq 90); do
  curl -sk --max-time 2 -o /dev/null "https://$SERVER_IP:6443/ping" && break
  ((attempt < 90)) || die "the k3s server at $SERVER_IP did not answer in 15 minutes"
  sleep 10
done

IFACE="$(iface_of "$NODE_IP")"
if [[ "$(k3s --version 2>/dev/null | awk 'NR == 1 {print $3}')" != "$K3S_VERSION" ]]; then
  say "installing k3s agent $K3S_VERSION (flannel on $IFACE)"
  k3s_installer "$K3S_VERSION" | INSTALL_K3S_VERSION="$K3S_VERSION" K3S_TOKEN="$K3S_TOKEN" \
    K3S_URL="https://$SERVER_IP:6443" sh -s - agent \
    --node-ip "$NODE_IP" --flannel-iface "$IFACE"
fi

say "fetching weft's image from the server"
tar=/var/lib/weft-lab/weft-image.tar
mkdir -p "$(dirname "$tar")"
for attempt in $(seq 90); do
  curl -sf --max-time 600 -o "$tar.part" "http://$SERVER_IP:8099/weft-image.tar" && break
  ((attempt < 90)) || die "no image at http://$SERVER_IP:8099/ after 15 minutes (server: weft-image.sh)"
  sleep 10
done
mv "$tar.part" "$tar"
k3s ctr -n k8s.io images import "$tar"
say "ready: joined $SERVER_IP, weft image imported"
