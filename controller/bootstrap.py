"""Kubernetes node bootstrap: a ServiceAccount token in, a node credential out.

The gRPC service `weft.mesh.v1.NodeBootstrap` runs on its own listener, with TLS that
authenticates only the controller (the caller has no certificate yet). The caller's token is
reviewed by the API server (TokenReview, audience `weft`); `controller.nodeauth` decides
which node that makes; the CA signs a node credential for that node's identity only, from a
CSR whose key the node made. From then on the node uses the credential on the main listener,
as a lab node does, and renews it there.

Bounded: tokens over 16 KiB are refused unread, and at most `MAX_REVIEWS` TokenReviews are
in flight (more callers are told to retry: a node retries with backoff).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Container
from typing import Any

import grpc
import structlog
from kubernetes import client as kclient
from prometheus_client import Counter

from controller.ca import CertificateAuthority, IssuedCertificate
from controller.nodeauth import (
    MAX_TOKEN_BYTES,
    NodeGrant,
    NodeTokenPolicy,
    PodFacts,
    TokenRefusal,
    WaypointGrant,
    authorize_token,
    authorize_waypoint_token,
)
from controller.server import split_pem
from meshcore import kubehttp
from meshcore.api import mesh_pb2 as pb
from meshcore.identity.certs import CertificateError
from meshcore.identity.spiffe import SpiffeId

log = structlog.get_logger("controller.bootstrap")

SERVICE = "weft.mesh.v1.NodeBootstrap"
MAX_REVIEWS = 16

BOOTSTRAPS = Counter(
    "weft_controller_node_bootstraps",
    "Node credentials asked for with a ServiceAccount token, by result.",
    ["result"],
)


class TokenReviewer:
    """Asks the API server whose token it is (authentication.k8s.io/v1 TokenReview)."""

    def __init__(self, api: kclient.ApiClient, audience: str) -> None:
        self.api = api
        self.audience = audience

    def _review(self, token: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        code, data = kubehttp.exchange(
            self.api,
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            body=body,
            timeout=(5, 10),
        )
        if code >= 300:
            raise RuntimeError(f"TokenReview failed: HTTP {code}: {data[:300]!r}")
        status = json.loads(data).get("status")
        return status if isinstance(status, dict) else {}

    async def review(self, token: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._review, token)


class BootstrapService:
    def __init__(
        self,
        ca: CertificateAuthority,
        reviewer: TokenReviewer,
        pods: Callable[[str, str], PodFacts | None],
        policy: NodeTokenPolicy,
        synced: asyncio.Event,
        revoked: Any = frozenset(),
        waypoints: Callable[[], Container[str]] = frozenset,
    ) -> None:
        """`waypoints()`: the identities of the Waypoints in the current mesh state."""
        self.ca = ca
        self.reviewer = reviewer
        self.pods = pods
        self.policy = policy
        self.synced = synced
        self.revoked = revoked
        self.waypoints = waypoints
        self._reviews = asyncio.Semaphore(MAX_REVIEWS)

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "NodeCredential": grpc.unary_unary_rpc_method_handler(
                    self.node_credential,
                    request_deserializer=pb.NodeTokenRequest.FromString,
                    response_serializer=pb.CertificateResponse.SerializeToString,
                ),
                "WaypointCredential": grpc.unary_unary_rpc_method_handler(
                    self.waypoint_credential,
                    request_deserializer=pb.NodeTokenRequest.FromString,
                    response_serializer=pb.CertificateResponse.SerializeToString,
                ),
            },
        )

    async def _refuse(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, result: str, reason: str
    ) -> None:
        BOOTSTRAPS.labels(result).inc()
        log.warning("node.bootstrap_refused", peer=context.peer(), result=result, reason=reason)
        await context.abort(code, reason)

    async def _reviewed(
        self, request: pb.NodeTokenRequest, context: grpc.aio.ServicerContext
    ) -> dict[str, Any]:
        """The TokenReview of the caller's token (bounded), or the call aborted saying why."""
        token = request.token
        if not token or len(token) > MAX_TOKEN_BYTES:
            await self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "bad_token",
                f"a ServiceAccount token (1 to {MAX_TOKEN_BYTES} bytes) is required",
            )
        # Pods are looked up in the controller's view: wait until it has read the cluster.
        await self.synced.wait()
        if self._reviews.locked():
            await self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "busy",
                f"{MAX_REVIEWS} token reviews are in flight; retry",
            )
        async with self._reviews:
            try:
                return await self.reviewer.review(token)
            except Exception as err:  # (the API server unreachable, or answering nonsense)
                await self._refuse(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    "review_failed",
                    f"cannot review the token: {err}",
                )
                raise

    async def node_credential(
        self, request: pb.NodeTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CertificateResponse:
        status = await self._reviewed(request, context)
        verdict = authorize_token(status, self.policy, self.pods)
        if isinstance(verdict, TokenRefusal):
            await self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED, "refused", verdict.reason
            )
        assert isinstance(verdict, NodeGrant)
        if verdict.node in self.revoked:
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "revoked",
                f"node {verdict.node!r} is revoked",
            )
        try:
            issued = self.ca.renew_node_credential(request.csr_pem.encode(), verdict.node)
        except CertificateError as err:
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "bad_csr",
                f"{err.reason} (the token proves node {verdict.node!r})",
            )
            raise
        BOOTSTRAPS.labels("issued").inc()
        log.info(
            "node.bootstrapped",
            node=verdict.node,
            pod=verdict.pod,
            token=hashlib.sha256(request.token.encode()).hexdigest()[:12],
            not_after=issued.not_after.isoformat(),
        )
        return self._answer(issued)

    async def waypoint_credential(
        self, request: pb.NodeTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CertificateResponse:
        status = await self._reviewed(request, context)
        verdict = authorize_waypoint_token(
            status, self.policy.audience, self.ca.trust_domain, self.waypoints(), self.pods
        )
        if isinstance(verdict, TokenRefusal):
            await self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED, "refused", verdict.reason
            )
        assert isinstance(verdict, WaypointGrant)
        try:
            issued = self.ca.sign_workload(
                request.csr_pem.encode(), {SpiffeId.parse(verdict.identity)}
            )
        except CertificateError as err:
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "bad_csr",
                f"{err.reason} (the token proves {verdict.identity})",
            )
            raise
        BOOTSTRAPS.labels("issued").inc()
        log.info(
            "waypoint.bootstrapped",
            identity=verdict.identity,
            pod=verdict.pod,
            not_after=issued.not_after.isoformat(),
        )
        return self._answer(issued)

    def _answer(self, issued: IssuedCertificate) -> pb.CertificateResponse:
        return pb.CertificateResponse(
            cert_chain_pem=[issued.cert_pem.decode(), *split_pem(issued.chain_pem)],
            roots_pem=list(self.ca.trust_bundle),
        )
