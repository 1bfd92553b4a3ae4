# The one weft image, ghcr.io/weft-mesh/weft:<version> (pyproject's version): the controller,
# the node agent, ztunnel and the waypoint. Each manifest names its process with `command`
# (`python -m controller|node_agent|ztunnel`); the default is the waypoint, because the
# controller's waypoint deployer gives its pods arguments only (`--gateway <ns>/<name>`).
#
#   docker build -t ghcr.io/weft-mesh/weft:0.1.0 .
#
# Debian bookworm with Debian's bcc (the node agent compiles its eBPF programs with it at
# start), bpftool, iproute2 and nftables, pinned to the versions weft is tested with (a test
# checks them against the development machine's). Debian drops superseded versions from its
# archive, security updates first: when a pin no longer resolves, take the archive's version,
# or build from snapshot.debian.org.
#
# The node pods run as root with a few capabilities (daemonset/README.md, "Node
# privileges"): a non-root user is not possible for them. The image's default user is
# unprivileged, for the controller and the waypoints.

FROM debian:bookworm-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates=20230311+deb12u1 \
      python3=3.11.2-1+b1 \
      python3-venv=3.11.2-1+b1 \
      python3-bpfcc=0.26.0+ds-1 \
      libbpfcc=0.26.0+ds-1 \
      bpftool=7.1.0+6.1.192-3 \
      iproute2=6.1.0-3 \
      nftables=1.0.6-2+deb12u2 \
 && rm -rf /var/lib/apt/lists/*

# The venv as scripts/setup.sh makes it: Debian's Python 3.11 (the one python3-bpfcc is
# built for) with its site-packages visible, so `import bcc` works, and weft installed
# editable from its source tree: the node agent finds its C sources in bpf/ next to its
# package, and setup.py generates the protobuf modules into meshcore/api/.
FROM runtime AS build
WORKDIR /opt/weft/src
COPY pyproject.toml setup.py README.md ./
COPY bpf ./bpf
COPY meshcore ./meshcore
COPY controller ./controller
COPY node_agent ./node_agent
COPY ztunnel ./ztunnel
COPY waypoint ./waypoint
COPY weftctl ./weftctl
COPY lab ./lab
COPY sample_apps ./sample_apps
RUN python3 -m venv --system-site-packages /opt/weft/venv \
 && /opt/weft/venv/bin/pip install --no-cache-dir -q --upgrade pip \
 && /opt/weft/venv/bin/pip install --no-cache-dir -q -e /opt/weft/src \
 && /opt/weft/venv/bin/python -c 'import bcc, pyroute2, controller.main, node_agent.main, ztunnel.main, waypoint.main'

FROM runtime AS weft
COPY --from=build /opt/weft /opt/weft
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin weft
ENV PATH=/opt/weft/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/weft/src
USER 10001:10001
ENTRYPOINT ["python", "-m", "waypoint", "run"]
