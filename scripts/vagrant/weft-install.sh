#!/usr/bin/env bash
# On the server, once k3s runs and weft's image is imported: Gateway API's CRDs (the user's
# to install, as with Istio; pinned release), weftctl in a venv (so `weftctl` works in
# `vagrant ssh server`), `weftctl precheck`, `weftctl install` from /vagrant/daemonset, and
# the lab's demo (lab/demo, enrolled by its namespace label) rewritten for the cluster.
#   env: GATEWAY_API_VERSION
set -euo pipefail
: "${GATEWAY_API_VERSION:?}"

say() { printf '[weft-install] %s\n' "$*"; }

export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
export WEFT_MANIFESTS=/vagrant/daemonset
VENV=/opt/weft/venv
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' /vagrant/pyproject.toml | head -1)"
IMAGE="ghcr.io/weft-mesh/weft:${VERSION:?no version in pyproject.toml}"

say "installing Gateway API $GATEWAY_API_VERSION (standard channel)"
k3s kubectl apply --server-side -f \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"

export DEBIAN_FRONTEND=noninteractive
if [[ ! -x "$VENV/bin/weftctl" ]]; then
  say "installing weftctl into $VENV"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv python3-dev >/dev/null
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# A copy, not -e: /vagrant is an rsync target that `vagrant rsync` rewrites.
"$VENV/bin/pip" install -q /vagrant
ln -sf "$VENV/bin/weftctl" /usr/local/bin/weftctl

say "weftctl precheck"
weftctl precheck --kubeconfig "$KUBECONFIG" || say "precheck found failures (above); installing anyway"

say "weftctl install ($IMAGE)"
weftctl install --kubeconfig "$KUBECONFIG" --manifests "$WEFT_MANIFESTS" --image "$IMAGE" \
  --timeout 900

say "deploying the demo (namespace demo, enrolled)"
"$VENV/bin/python" /vagrant/scripts/vagrant/demo_manifests.py --image "$IMAGE" /vagrant/lab/demo \
  | k3s kubectl apply --server-side -f -
say "ready: vagrant ssh server -c 'kubectl get pods -A'"
