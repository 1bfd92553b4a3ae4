#!/usr/bin/env bash
# Shared by k3s-server.sh and k3s-agent.sh (sourced): the pinned k3s installer, and the
# network interface that carries this node's private-network address (flannel must use it,
# not the NAT interface every Vagrant VM has first).

# The installer from the same tag as the binary, not get.k3s.io's latest.
k3s_installer() {
  local version="$1"
  curl -sfL --retry 5 "https://raw.githubusercontent.com/k3s-io/k3s/${version//+/%2B}/install.sh"
}

iface_of() {
  local ip="$1" found
  found="$(ip -o -4 addr show | awk -v ip="$ip" '{split($4, a, "/"); if (a[1] == ip) print $2}')"
  [[ -n "$found" ]] || { echo "no interface has $ip" >&2; return 1; }
  echo "$found"
}
