"""An HBONE client and server joined through memory, for the sans-IO protocol tests."""

from __future__ import annotations

from meshcore.hbone import ConnectRequested, HboneClient, HboneServer, Target


def pump(a, b) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    """Move bytes both ways until quiet; returns (events at a, events at b)."""
    got_a, got_b = [], []
    for _ in range(20):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            break
        if out_a:
            got_b += b.receive(out_a)
        if out_b:
            got_a += a.receive(out_b)
    return got_a, got_b


def connected() -> tuple[HboneClient, HboneServer]:
    client, server = HboneClient(), HboneServer()
    server.receive(client.initiate())
    client.receive(server.initiate())
    pump(client, server)
    return client, server


def open_stream() -> tuple[HboneClient, HboneServer, int]:
    """A connected pair with one CONNECT stream accepted; its id is the same at both ends."""
    client, server = connected()
    sid = client.connect(Target("10.0.0.1", 80))
    _, at_server = pump(client, server)
    [req] = [e for e in at_server if isinstance(e, ConnectRequested)]
    server.accept(req.stream_id)
    pump(client, server)
    return client, server, sid
