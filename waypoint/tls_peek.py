"""The I/O edge of `waypoint.clienthello`: the SNI of a passed-through stream's ClientHello,
read from what the stream has buffered, for the L4 verdict's `connection.sni`.

Only asked for when a policy for the destination uses `connection.sni`. Usually the hello is
already in what protocol sniffing buffered (it arrives in one HBONE DATA frame); otherwise we
wait for the bytes `clienthello.inspect` asks for, at most `timeout` (the sniff timeout, 1 s),
never past clienthello.MAX_INSPECT bytes of hello. Everything read is put back for the relay.

What the verdict gets: the name (or "" for a hello without one); "" too when the stream is not
TLS or the client sent nothing in time (a server-first protocol); None when a TLS hello began
but was not complete in time, or is larger than we inspect, so `connection.sni` conditions
cannot be evaluated (DENY rules match, ALLOW rules do not): a client cannot slip a name past
a DENY by trickling or padding its hello. Outcomes are counted in
`weft_waypoint_client_hellos_total{outcome}`.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Counter

from waypoint import clienthello
from waypoint.clienthello import State
from waypoint.streamio import BufferedEnd, EndClosed

HELLOS = Counter(
    "weft_waypoint_client_hellos",
    "TLS ClientHellos inspected on TCP passthrough streams for connection.sni, by outcome.",
    ("outcome",),  # found, not_tls, too_large, incomplete, silent, closed
)


def verdict_sni(hello: clienthello.Hello, *, prefix_empty: bool) -> tuple[str | None, str]:
    """(the SNI for authorization, the outcome label) once no more bytes will be waited for."""
    if hello.state is State.FOUND:
        return hello.server_name, "found"
    if hello.state is State.NOT_TLS:
        return "", "not_tls"
    if hello.state is State.TOO_LARGE:
        return None, "too_large"
    if prefix_empty:
        return "", "silent"
    return None, "incomplete"


async def client_sni(end: BufferedEnd, timeout: float) -> str | None:
    """The SNI of the stream's ClientHello for the L4 verdict (see the module docstring)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    prefix = b""
    hello = clienthello.inspect(prefix)
    try:
        while hello.state is State.NEED_MORE:
            while len(prefix) < hello.need:
                chunk = await end.read(deadline)
                if not chunk:
                    raise EOFError
                prefix += chunk
            hello = clienthello.inspect(prefix)
    except (TimeoutError, EOFError):
        pass
    except EndClosed:
        HELLOS.labels("closed").inc()
        return ""  # (the stream is gone; the relay sees that too)
    finally:
        end.unread(prefix)
    sni, outcome = verdict_sni(hello, prefix_empty=not prefix)
    HELLOS.labels(outcome).inc()
    return sni
