"""Versioned mesh state and what each node must be sent to catch up.

Pure bookkeeping, no I/O. Every change of the state gets the next version; the log keeps the
recent deltas so a node that reconnects with (epoch, version) gets only what changed since,
or a snapshot when that version is too old or from another epoch (a controller restart).

Each resource is serialized once, when it changes; a StateUpdate for any node is built by
concatenating those bytes, so pushing one change to many nodes costs one serialization.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.internal.encoder import _VarintBytes

from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import key_to_proto, to_proto
from meshcore.meshstate import StateValue
from meshcore.resources import ResourceKey

_UPSERT_TAG = b"\x22"  # StateUpdate.upserts: field 4, length-delimited
_REMOVAL_TAG = b"\x2a"  # StateUpdate.removals: field 5, length-delimited


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _VarintBytes(len(payload)) + payload


@dataclass(frozen=True)
class Delta:
    version: int
    upserts: frozenset[ResourceKey]
    removals: frozenset[ResourceKey]
    created: float  # time.monotonic() when the change was computed


@dataclass(frozen=True)
class Update:
    """Bytes of one StateUpdate for a node, and what it contains."""

    version: int
    snapshot: bool
    payload: bytes
    resources: int
    removals: int


class StateLog:
    def __init__(self, *, history: int = 1024, epoch: str | None = None) -> None:
        self.epoch = epoch or secrets.token_hex(8)
        self.version = 0
        self._values: dict[ResourceKey, StateValue] = {}
        self._bytes: dict[ResourceKey, bytes] = {}  # serialized Resource per key
        self._history: deque[Delta] = deque(maxlen=history)
        # One snapshot per version, shared by every stream that sends it: 100 nodes
        # subscribing at once held 100 copies of it (2 MB each at 10k pods), docs/scale.md.
        self._snapshot: Update | None = None

    @property
    def values(self) -> Mapping[ResourceKey, StateValue]:
        return self._values

    def update(self, state: Mapping[ResourceKey, StateValue]) -> Delta | None:
        """Take the new full state; return the delta it made (None if nothing changed)."""
        upserts = set()
        for key, value in state.items():
            old = self._values.get(key)
            if old is value or old == value:
                continue
            self._bytes[key] = to_proto(value).SerializeToString()
            upserts.add(key)
        removals = self._values.keys() - state.keys()
        for key in removals:
            del self._bytes[key]
        if not upserts and not removals:
            return None
        self._values = dict(state)
        self.version += 1
        delta = Delta(self.version, frozenset(upserts), frozenset(removals), time.monotonic())
        self._history.append(delta)
        return delta

    def _header(self, version: int, snapshot: bool) -> bytes:
        return pb.StateUpdate(
            epoch=self.epoch, version=version, snapshot=snapshot
        ).SerializeToString()

    def snapshot(self) -> Update:
        if self._snapshot is None or self._snapshot.version != self.version:
            parts = [self._header(self.version, True)]
            parts += [_field(_UPSERT_TAG, b) for b in self._bytes.values()]
            self._snapshot = Update(self.version, True, b"".join(parts), len(self._bytes), 0)
        return self._snapshot

    def since(self, epoch: str, version: int) -> Update | None:
        """What a node at (epoch, version) needs: None if it is current, a delta if the log
        still covers its version, else a snapshot."""
        if epoch == self.epoch and version == self.version:
            return None
        if epoch != self.epoch or version > self.version or not self._covers(version):
            return self.snapshot()
        upserts: set[ResourceKey] = set()
        removals: set[ResourceKey] = set()
        for delta in self._history:
            if delta.version <= version:
                continue
            upserts -= delta.removals
            removals -= delta.upserts
            upserts |= delta.upserts
            removals |= delta.removals
        parts = [self._header(self.version, False)]
        parts += [_field(_UPSERT_TAG, self._bytes[k]) for k in sorted(upserts)]
        parts += [
            _field(_REMOVAL_TAG, key_to_proto(k).SerializeToString()) for k in sorted(removals)
        ]
        return Update(self.version, False, b"".join(parts), len(upserts), len(removals))

    def _covers(self, version: int) -> bool:
        if version == self.version:
            return True
        return bool(self._history) and self._history[0].version <= version + 1

    def created_at(self, version: int) -> float | None:
        for delta in reversed(self._history):
            if delta.version == version:
                return delta.created
        return None
