"""How large a gRPC message may be, each way, between the controller and a node.

A node sends little: Hello, ACK, NACK (its reason is cut at 4,000 characters) and CSRs of
about a kilobyte. The controller sends the mesh state: a snapshot for 10,000 pods and 1,000
services (scripts/bench/controller_scale.py) is about 2 MiB, so 32 MiB leaves room for some
150,000 pods. Each side refuses what exceeds the other's limit (RESOURCE_EXHAUSTED) and keeps
serving: a peer cannot make it buffer and parse 256 MiB messages.
"""

from __future__ import annotations

NODE_MESSAGE_MAX = 64 * 1024  # node -> controller: Hello, Ack, Nack, CertificateRequest
STATE_MESSAGE_MAX = 32 * 1024 * 1024  # controller -> node: StateUpdate, CertificateResponse
