#!/usr/bin/env bash
# The k3s server (control plane, and a node that runs pods too), pinned to $K3S_VERSION,
# with flannel (vxlan) on the private network. traefik and servicelb are left out: the lab
# has no ingress, and weft brings its own L7 (waypoints).
#   env: K3S_VERSION, K3S_TOKEN, NODE_IP
set -euo pipefail
: "${K3S_VERSION:?}" "${K3S_TOKEN:?}" "${NODE_IP:?}"
# shellcheck source=scripts/vagrant/lib-k3s.sh
source /vagrant/scripts/vagrant/lib-k3s.sh

say() { printf '[k3s-server] %s\n' "$*"; }

IFACE="$(iface_of "$NODE_IP")"
if [[ "$(k3s --version 2>/dev/null | awk 'NR == 1 {print $3}')" != "$K3S_VERSION" ]]; then
  say "installing k3s $K3S_VERSION (flannel on $IFACE)"
  k3s_installer "$K3S_VERSION" | INSTALL_K3S_VERSION="$K3S_VERSION" K3S_TOKEN="$K3S_TOKEN" sh -s - \
    server \
    --node-ip "$NODE_IP" --advertise-address "$NODE_IP" --flannel-iface "$IFACE" \
    --flannel-backend vxlan --write-kubeconfig-mode 0644 \
    --disable traefik --disable servicelb
fi

say "waiting for the node to be Ready"
for _ in $(seq 60); do
  k3s kubectl get node "$(hostname)" >/dev/null 2>&1 && break
  sleep 2
done
k3s kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=300s
# kubectl and weftctl find the cluster without flags, for root and for the vagrant user.
cat > /etc/profile.d/weft-kube.sh <<'PROFILE'
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
export WEFT_MANIFESTS=/vagrant/daemonset
PROFILE
say "ready: $(k3s --version | head -1)"
