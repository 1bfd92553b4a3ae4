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
import datetime as dt
import fcntl
import importlib.metadata
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from cryptography import x509

from meshcore.api import limits
from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import ConversionError, from_proto, key_from_proto
from meshcore.identity.certs import (
    CertificateError,
    key_to_pem,
    load_chain,
    load_private_key,
    make_csr,
    new_private_key,
    public_keys_match,
    spiffe_id_of,
)
from meshcore.identity.spiffe import SpiffeId
from meshcore.meshstate import StateValue
from meshcore.resources import ResourceKey

log = structlog.get_logger("configclient")

SERVICE = "weft.mesh.v1.MeshConfig"
CONTROLLER_NAME = "weft-controller"  # the DNS SAN of the controller's serving certificate
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0
RENEWAL_RETRY = 30.0  # seconds between attempts to renew the node credential


def _weft_version() -> str:
    try:
        return importlib.metadata.version("weftmesh")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that was not installed
        return "unknown"


WEFT_VERSION = _weft_version()  # sent in Hello, as Istio's proxies send ISTIO_VERSION


@dataclass(frozen=True)
class NodeCredential:
    """The key and client certificate a node presents to the controller, and the roots it
    trusts the controller by. Short-lived: the node renews it at half life
    (`ConfigClient.renew_credential`), and keeps the renewed one in its folder, if it came
    from one, for the node's next start."""

    key_pem: bytes
    cert_pem: bytes  # the leaf, then its chain
    roots_pem: bytes
    folder: Path | None = field(default=None, compare=False)

    @classmethod
    def load(cls, folder: Path) -> NodeCredential:
        """key.pem, cert.pem and roots.pem from `folder`; CertificateError when the key is
        not the certificate's (the folder is written under a lock, so this is not a race)."""
        with _locked(folder, fcntl.LOCK_SH):
            credential = cls(
                (folder / "key.pem").read_bytes(),
                (folder / "cert.pem").read_bytes(),
                (folder / "roots.pem").read_bytes(),
                folder,
            )
        credential.check()
        return credential

    def save(self, folder: Path) -> None:
        """Write the three files (0600, folder 0700), each replaced atomically, all three
        under the folder's lock: two processes of one node may renew at once."""
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        with _locked(folder, fcntl.LOCK_EX):
            for name, data in (
                ("key.pem", self.key_pem),
                ("cert.pem", self.cert_pem),
                ("roots.pem", self.roots_pem),
            ):
                _write_atomically(folder / name, data)

    def check(self) -> None:
        leaf = self.leaf
        if not public_keys_match(leaf, load_private_key(self.key_pem)):
            raise CertificateError("key.pem is not the key of cert.pem", source=str(self.folder))

    @property
    def leaf(self) -> x509.Certificate:
        return load_chain(self.cert_pem)[0]

    @property
    def identity(self) -> SpiffeId:
        return spiffe_id_of(self.leaf)

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    def refresh_at(self) -> dt.datetime:
        """Half way through its lifetime, as workload certificates are renewed."""
        before, after = self.leaf.not_valid_before_utc, self.leaf.not_valid_after_utc
        return before + (after - before) / 2


@contextlib.contextmanager
def _locked(folder: Path, operation: int) -> Iterator[None]:
    try:
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield  # a read-only folder (a mounted secret): nobody writes it, nothing to lock
        return
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
        component: str = "",
    ) -> None:
        self.node = node
        self.component = component
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
        self._channel: grpc.aio.Channel | None = None  # for unary calls
        self._outbox: asyncio.Queue[pb.SubscribeRequest | None] | None = None
        self._version_event = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()

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
        """Stay subscribed until cancelled, reconnecting with backoff; renew the node
        credential before it expires."""
        renewal = asyncio.create_task(self._keep_credential_fresh())
        try:
            await self._stay_subscribed()
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal

    async def _stay_subscribed(self) -> None:
        backoff = BACKOFF_START
        while True:
            credential = self.credential
            try:
                await self._subscribe_once()
                backoff = BACKOFF_START
            except grpc.aio.AioRpcError as err:
                renewed = self.credential is not credential
                log.warning(
                    "controller.stream_failed",
                    node=self.node,
                    target=self.target,
                    code=err.code().name,
                    details=err.details(),
                    credential_renewed=renewed,
                )
                if not renewed and err.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    backoff = BACKOFF_MAX
            finally:
                self.connected = False
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _subscribe_once(self) -> None:
        """One Subscribe stream, on a channel of its own (made with the credential of the
        moment), until it fails or is ended to reconnect with a renewed credential."""
        channel = self._open_channel()
        outbox: asyncio.Queue[pb.SubscribeRequest | None] = asyncio.Queue()
        outbox.put_nowait(
            pb.SubscribeRequest(
                hello=pb.Hello(
                    node=self.node,
                    epoch=self.epoch,
                    version=self.version,
                    component=self.component,
                    weft_version=WEFT_VERSION,
                )
            )
        )

        async def requests() -> AsyncIterator[pb.SubscribeRequest]:
            while (request := await outbox.get()) is not None:
                yield request

        self._outbox = outbox
        try:
            call = channel.stream_stream(
                f"/{SERVICE}/Subscribe",
                request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=pb.StateUpdate.FromString,
            )(requests())
            # read(), not `async for`: grpc's iterator holds the last message until the next
            # arrives, and a snapshot of 50k workloads is ~50 MB parsed. Freed once handled
            # (ztunnel.state then hands it back to the kernel).
            while (update := await call.read()) is not grpc.aio.EOF:
                self.connected = True
                self._handle(update, outbox)
                del update
        finally:
            self._outbox = None
            await channel.close()

    def _handle(
        self, update: pb.StateUpdate, outbox: asyncio.Queue[pb.SubscribeRequest | None]
    ) -> None:
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

    # --- the node credential -------------------------------------------------------------

    async def _keep_credential_fresh(self) -> None:
        """Renew the credential from half its lifetime on, retrying until it works."""
        while True:
            wait = (self.credential.refresh_at() - _utc_now()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600))  # looked at again hourly: clocks jump
                continue
            try:
                await self.renew_credential()
            except (grpc.aio.AioRpcError, CertificateError, OSError) as err:
                log.warning(
                    "credential.renewal_failed",
                    node=self.node,
                    reason=err.details() if isinstance(err, grpc.aio.AioRpcError) else str(err),
                    expires=self.credential.not_after.isoformat(),
                )
                await asyncio.sleep(RENEWAL_RETRY * random.uniform(0.8, 1.2))

    async def renew_credential(self, timeout: float = 10) -> NodeCredential:
        """A new key and a certificate for it from the controller, asked for with the current
        credential; used from then on (the config stream reconnects with it) and saved to
        the credential's folder for the next start."""
        key = new_private_key()
        reply = await self.certificate(make_csr(key, self.credential.identity), timeout)
        renewed = NodeCredential(
            key_to_pem(key),
            "".join(reply.cert_chain_pem).encode(),
            "".join(reply.roots_pem).encode() or self.credential.roots_pem,
            self.credential.folder,
        )
        renewed.check()
        if renewed.identity != self.credential.identity:
            raise CertificateError(
                f"the controller renewed {self.credential.identity} as {renewed.identity}"
            )
        if renewed.folder is not None:
            try:
                await asyncio.to_thread(renewed.save, renewed.folder)
            except OSError as err:
                log.warning("credential.not_saved", folder=str(renewed.folder), reason=str(err))
        self.credential = renewed
        old, self._channel = self._channel, None
        if old is not None:
            self._close_later(old)
        if self._outbox is not None:
            self._outbox.put_nowait(None)  # end the stream; it reconnects with the new one
        log.info(
            "credential.renewed",
            node=self.node,
            identity=str(renewed.identity),
            not_after=renewed.not_after.isoformat(),
        )
        return renewed

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        """Close a channel once the calls on it are done (or in 15 s)."""
        task = asyncio.create_task(channel.close(grace=15))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
