"""A node's copy of the mesh state, kept in step with the controller over gRPC.

Used by every per-node process (node agent, ztunnel). It keeps the last state it got while
the controller is unreachable, resumes from its version on reconnect, and turns every
message into typed values at the edge: a resource that does not convert (or that the
process's own `validate` refuses) is skipped, its last good version kept, and the version
NACKed with the reason; everything else in that version applies and the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from meshcore.api import limits
from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import ConversionError, from_proto, key_from_proto
from meshcore.meshstate import StateValue
from meshcore.resources import ResourceKey

log = structlog.get_logger("configclient")

SERVICE = "weft.mesh.v1.MeshConfig"
CONTROLLER_NAME = "weft-controller"  # the DNS SAN of the controller's serving certificate
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0


@dataclass(frozen=True)
class NodeCredential:
    key_pem: bytes
    cert_pem: bytes
    roots_pem: bytes

    @classmethod
    def load(cls, folder: Path) -> NodeCredential:
        return cls(
            (folder / "key.pem").read_bytes(),
            (folder / "cert.pem").read_bytes(),
            (folder / "roots.pem").read_bytes(),
        )


@dataclass(frozen=True)
class Applied:
    """What one StateUpdate changed in the local copy."""

    version: int
    snapshot: bool
    changed: frozenset[ResourceKey]
    rejected: Mapping[ResourceKey, str]


Validator = Callable[[StateValue], str | None]


def apply_update(
    state: dict[ResourceKey, StateValue],
    update: pb.StateUpdate,
    validate: Validator | None = None,
) -> tuple[dict[ResourceKey, StateValue], Applied]:
    """Pure: the state after `update`, keeping the last good value of rejected resources."""
    new: dict[ResourceKey, StateValue] = {} if update.snapshot else dict(state)
    rejected: dict[ResourceKey, str] = {}
    for msg in update.upserts:
        key = key_from_proto(msg.key)
        try:
            value = from_proto(msg)
            problem = validate(value) if validate else None
            if problem:
                raise ConversionError(f"{key}: {problem}")
        except ConversionError as err:
            rejected[key] = str(err)
            if key in state:
                new[key] = state[key]  # last good version stays in force
            continue
        new[key] = value
    for msg in update.removals:
        new.pop(key_from_proto(msg), None)
    # Only keys the update names can have changed (a snapshot names them all); comparing
    # just those keeps a one-resource delta O(1) however big the state is.
    if update.snapshot:
        candidates = new.keys() | state.keys()
    else:
        candidates = {key_from_proto(m.key) for m in update.upserts} | {
            key_from_proto(m) for m in update.removals
        }
    changed = {k for k in candidates if not _same(new.get(k), state.get(k))}
    return new, Applied(update.version, update.snapshot, frozenset(changed), rejected)


def _same(a: object, b: object) -> bool:
    return a is b or a == b


class ConfigClient:
    def __init__(
        self,
        node: str,
        target: str,
        credential: NodeCredential,
        *,
        validate: Validator | None = None,
        on_change: Callable[[Applied], None] | None = None,
        server_name: str = CONTROLLER_NAME,
    ) -> None:
        self.node = node
        self.target = target
        self.credential = credential
        self.validate = validate
        self.on_change = on_change
        self.server_name = server_name
        self.state: dict[ResourceKey, StateValue] = {}
        self.epoch = ""
        self.version = 0
        self.synced = asyncio.Event()
        self.connected = False
        self.updates = 0
        self._channel: grpc.aio.Channel | None = None
        self._version_event = asyncio.Event()

    def _open_channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.credential.roots_pem,
            private_key=self.credential.key_pem,
            certificate_chain=self.credential.cert_pem,
        )
        return grpc.aio.secure_channel(
            self.target,
            creds,
            options=[
                ("grpc.ssl_target_name_override", self.server_name),
                ("grpc.max_receive_message_length", limits.STATE_MESSAGE_MAX),
                ("grpc.max_send_message_length", limits.NODE_MESSAGE_MAX),
                ("grpc.keepalive_time_ms", 20_000),
            ],
        )

    async def wait_for_version(self, version: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.version < version:
                event = self._version_event
                await event.wait()

    async def run(self) -> None:
        """Stay subscribed until cancelled, reconnecting with backoff."""
        backoff = BACKOFF_START
        while True:
            try:
                await self._subscribe_once()
                backoff = BACKOFF_START
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "controller.stream_failed",
                    node=self.node,
                    target=self.target,
                    code=err.code().name,
                    details=err.details(),
                )
                if err.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    backoff = BACKOFF_MAX
            finally:
                self.connected = False
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _subscribe_once(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._open_channel()
        outbox: asyncio.Queue[pb.SubscribeRequest] = asyncio.Queue()
        outbox.put_nowait(
            pb.SubscribeRequest(
                hello=pb.Hello(node=self.node, epoch=self.epoch, version=self.version)
            )
        )

        async def requests() -> AsyncIterator[pb.SubscribeRequest]:
            while True:
                yield await outbox.get()

        call = self._channel.stream_stream(
            f"/{SERVICE}/Subscribe",
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.StateUpdate.FromString,
        )(requests())
        async for update in call:
            self.connected = True
            self._handle(update, outbox)

    def _handle(self, update: pb.StateUpdate, outbox: asyncio.Queue[pb.SubscribeRequest]) -> None:
        self.state, applied = apply_update(self.state, update, self.validate)
        self.epoch, self.version = update.epoch, update.version
        self.updates += 1
        if applied.rejected:
            reason = "; ".join(sorted(applied.rejected.values()))
            outbox.put_nowait(
                pb.SubscribeRequest(nack=pb.Nack(version=update.version, reason=reason[:4000]))
            )
            log.warning("config.rejected", node=self.node, version=update.version, reason=reason)
        else:
            outbox.put_nowait(pb.SubscribeRequest(ack=pb.Ack(version=update.version)))
        log.debug(
            "config.applied",
            node=self.node,
            version=update.version,
            snapshot=update.snapshot,
            changed=len(applied.changed),
        )
        self.synced.set()
        event, self._version_event = self._version_event, asyncio.Event()
        event.set()
        if self.on_change is not None:
            self.on_change(applied)

    async def certificate(self, csr_pem: bytes, timeout: float = 10) -> pb.CertificateResponse:
        if self._channel is None:
            self._channel = self._open_channel()
        call = self._channel.unary_unary(
            f"/{SERVICE}/Certificate",
            request_serializer=pb.CertificateRequest.SerializeToString,
            response_deserializer=pb.CertificateResponse.FromString,
        )
        response: pb.CertificateResponse = await call(
            pb.CertificateRequest(csr_pem=csr_pem.decode()), timeout=timeout
        )
        return response

    async def close(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
