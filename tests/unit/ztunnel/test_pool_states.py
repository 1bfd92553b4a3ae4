"""The HBONE pool's connection states (ztunnel/pool.py) as a table, without sockets: what a
pooled connection is good for, and when the reaper closes it."""

from __future__ import annotations

import pytest

from ztunnel.pool import USABLE, Pooled, pooled_state, reapable


@pytest.mark.parametrize(
    ("transport_closed", "protocol_closed", "open_streams", "max_streams", "state"),
    [
        (False, False, 0, 100, Pooled.IDLE),
        (False, False, 1, 100, Pooled.ACTIVE),
        (False, False, 99, 100, Pooled.ACTIVE),
        (False, False, 100, 100, Pooled.FULL),
        (False, False, 0, 0, Pooled.FULL),  # a peer that allows no stream at all
        (False, True, 3, 100, Pooled.DRAINING),  # GOAWAY: its streams finish, no new ones
        (False, True, 0, 100, Pooled.DRAINING),
        (True, False, 0, 100, Pooled.CLOSED),
        (True, True, 5, 100, Pooled.CLOSED),
    ],
)
def test_a_pooled_connection_state_follows_from_its_facts(
    transport_closed: bool, protocol_closed: bool, open_streams: int, max_streams: int,
    state: Pooled,
) -> None:  # fmt: skip
    got = pooled_state(
        transport_closed=transport_closed,
        protocol_closed=protocol_closed,
        open_streams=open_streams,
        max_streams=max_streams,
    )
    assert got is state


def test_only_active_and_idle_connections_take_new_streams() -> None:
    assert {Pooled.ACTIVE, Pooled.IDLE} == USABLE


@pytest.mark.parametrize(
    ("state", "idle_for", "close"),
    [
        (Pooled.IDLE, 61.0, True),
        (Pooled.IDLE, 59.0, False),
        (Pooled.ACTIVE, 600.0, False),  # busy connections are never reaped
        (Pooled.FULL, 600.0, False),
        (Pooled.DRAINING, 0.0, True),  # will never carry another stream
        (Pooled.CLOSED, 600.0, False),  # already gone: forgotten, not closed again
    ],
)
def test_the_reaper_closes_idle_and_draining_connections(
    state: Pooled, idle_for: float, close: bool
) -> None:
    assert reapable(state, idle_for, idle_timeout=60.0) is close
