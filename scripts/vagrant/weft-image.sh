#!/usr/bin/env bash
# Build weft's one image from the repository's Dockerfile on the server (podman: no daemon
# beside k3s's containerd), import it into k3s's containerd, and offer it to the agents over
# the private network (k3s-agent.sh fetches it). The tag is the manifests' own,
# ghcr.io/weft-mesh/weft:<pyproject version>, so daemonset/ needs no patch and the kubelet
# never pulls (imagePullPolicy IfNotPresent for a versioned tag).
#   env: SERVER_IP
set -euo pipefail
: "${SERVER_IP:?}"

say() { printf '[weft-image] %s\n' "$*"; }

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' /vagrant/pyproject.toml | head -1)"
IMAGE="ghcr.io/weft-mesh/weft:${VERSION:?no version in pyproject.toml}"
SHARE=/var/lib/weft-lab/share

export DEBIAN_FRONTEND=noninteractive
if ! command -v podman >/dev/null; then
  say "installing podman"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends podman fuse-overlayfs >/dev/null
fi

say "building $IMAGE from /vagrant/Dockerfile"
podman build --tag "$IMAGE" --file /vagrant/Dockerfile /vagrant
mkdir -p "$SHARE"
podman save --format docker-archive --output "$SHARE/weft-image.tar.part" "$IMAGE"
mv "$SHARE/weft-image.tar.part" "$SHARE/weft-image.tar"
k3s ctr -n k8s.io images import "$SHARE/weft-image.tar"

# The agents' copy: a plain HTTP server on the private address only, for the lab's lifetime.
if ! systemctl is-active --quiet weft-lab-share; then
  systemd-run --unit weft-lab-share --property Restart=on-failure \
    python3 -m http.server 8099 --bind "$SERVER_IP" --directory "$SHARE"
fi
say "ready: $IMAGE in k3s, offered at http://$SERVER_IP:8099/weft-image.tar"
