"""A node's first credential on Kubernetes: its pod's ServiceAccount token traded for a node
credential at the controller's bootstrap listener (`controller.bootstrap`).

A lab node is handed a credential folder; a DaemonSet pod has only its projected token
(audience `weft`) and the controller's root (from the `weft-ca-root-cert` ConfigMap). Before
the agent or ztunnel starts, `ensure_credential` checks the folder: a credential with time
left is used as it is (and renewed on the main listener, as in the lab); otherwise a new key
is made, a CSR for the node's identity sent with the token, and the answer saved. The key
never leaves the node, and the controller, not the caller, decides which node the token
proves (the one its pod runs on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from meshcore.api import mesh_pb2 as pb
from meshcore.configclient import CONTROLLER_NAME, NodeCredential
from meshcore.identity.certs import CertificateError, key_to_pem, make_csr, new_private_key
from meshcore.identity.spiffe import SpiffeId

log = structlog.get_logger("nodebootstrap")

SERVICE = "weft.mesh.v1.NodeBootstrap"
MIN_LIFETIME = dt.timedelta(minutes=5)  # less left than this: get a new one
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0


@dataclass(frozen=True)
class Bootstrap:
    """How a node gets its credential when its folder has none (all three from the pod)."""

    token_file: Path  # the projected ServiceAccount token (kubelet rotates it)
    address: str  # host:port of the controller's bootstrap listener
    roots_file: Path  # PEM roots the controller's serving certificate chains to
    server_name: str = CONTROLLER_NAME


class BootstrapRefused(Exception):
    """The controller said no (a wrong token, a pod on another node): retrying won't help
    until something changes, but a DaemonSet pod keeps trying, saying why."""


def usable(folder: Path, now: dt.datetime | None = None) -> NodeCredential | None:
    """The credential in `folder` if it has at least MIN_LIFETIME left, else None."""
    try:
        credential = NodeCredential.load(folder)
    except (OSError, CertificateError, ValueError):
        return None
    now = now or dt.datetime.now(dt.UTC)
    return credential if credential.not_after - now >= MIN_LIFETIME else None


NODE_RPC, WAYPOINT_RPC = "NodeCredential", "WaypointCredential"


async def request_credential(
    identity: SpiffeId, how: Bootstrap, rpc: str = NODE_RPC, timeout: float = 15
) -> NodeCredential:
    """One attempt: token + CSR for `identity` in, a checked credential out."""
    token = how.token_file.read_text().strip()
    roots = how.roots_file.read_bytes()
    key = new_private_key()
    request = pb.NodeTokenRequest(token=token, csr_pem=make_csr(key, identity).decode())
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    async with grpc.aio.secure_channel(
        how.address, credentials, options=[("grpc.ssl_target_name_override", how.server_name)]
    ) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/{rpc}",
            request_serializer=pb.NodeTokenRequest.SerializeToString,
            response_deserializer=pb.CertificateResponse.FromString,
        )
        try:
            reply = await call(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise BootstrapRefused(err.details() or str(err.code())) from err
            raise
    credential = NodeCredential(
        key_to_pem(key),
        "".join(reply.cert_chain_pem).encode(),
        "".join(reply.roots_pem).encode() or roots,
    )
    credential.check()
    if credential.identity != identity:
        raise CertificateError(f"the controller issued {credential.identity}, not {identity}")
    return credential


async def ensure_credential(
    folder: Path, identity: SpiffeId, how: Bootstrap | None, rpc: str = NODE_RPC
) -> NodeCredential:
    """The credential to start with: the folder's, or (with `how`) a new one for `identity`
    (a node's, or with WAYPOINT_RPC a waypoint's), asked for until the controller gives it
    (backoff with jitter) and saved in `folder`."""
    found = usable(folder)
    if found is not None or how is None:
        return found if found is not None else NodeCredential.load(folder)
    backoff = BACKOFF_START
    while True:
        try:
            credential = await request_credential(identity, how, rpc)
        except (BootstrapRefused, grpc.aio.AioRpcError, CertificateError, OSError) as err:
            reason = err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err)
            log.warning(
                "credential.bootstrap_failed",
                identity=str(identity),
                controller=how.address,
                refused=isinstance(err, BootstrapRefused),
                reason=reason,
                retry_in=round(backoff, 2),
            )
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        await asyncio.to_thread(credential.save, folder)
        log.info(
            "credential.bootstrapped",
            identity=str(identity),
            not_after=credential.not_after.isoformat(),
        )
        return NodeCredential.load(folder)
